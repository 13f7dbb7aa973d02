"""The server's /metrics through prometheus-client: the documented series, process metrics, one
registry per app (issue 10)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from server_helpers import start_server  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def test_metrics_has_every_documented_series_and_the_process_ones(tmp_path: Path) -> None:
    row = next(line for line in DOCS.read_text().splitlines() if line.startswith("| GET | `/metrics`"))
    documented = set(re.findall(r"`((?:proctor|process)_[a-z_]+)", row))
    assert {"proctor_queue_length", "process_open_fds"} <= documented
    srv = start_server(tmp_path / "data")
    try:
        srv.client("alice").get("/v1/jobs")
        text = srv.client(None).get("/metrics").text
    finally:
        srv.stop()
    exposed = set(re.findall(r"^# TYPE (\w+) ", text, re.MULTILINE))
    # a series without samples yet is still announced; private-channel counts need a tunnel hub
    assert documented - {"proctor_private_channel_calls_total"} <= exposed, documented - exposed
    assert re.search(r"^process_open_fds \d", text, re.MULTILINE)
    assert re.search(r'^proctor_http_requests_total\{method="GET",route="/v1/jobs",status="200"\} 1', text, re.M)


def test_two_apps_in_one_process_count_apart(tmp_path: Path) -> None:
    first, second = start_server(tmp_path / "a"), start_server(tmp_path / "b")
    try:
        for _ in range(3):
            first.client("alice").get("/v1/jobs")
        text = second.client(None).get("/metrics").text
    finally:
        first.stop()
        second.stop()
    assert 'route="/v1/jobs"' not in text
