"""``proctor.client.Client`` answers with the job API's typed models (``proctor.api_models``), read
from a real server; the client side never loads ``proctor.server`` (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from server_helpers import start_server  # noqa: E402

from proctor.api_models import ArtifactInfo, BatchView, Health, JobView, LogPage, ServerInfo, SubmitResponse  # noqa: E402
from proctor.client import Client  # noqa: E402
from proctor.errors import ProctorError  # noqa: E402


def test_every_answer_is_its_typed_model(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    try:
        with Client(srv.url, srv.tokens["alice"]) as client:
            assert isinstance(client.health(), Health) and client.health().ok is True
            answer = client.submit(template="script", params={"mode": "lines", "arg": "3"}, batch_id="batch-typed-1")
            assert isinstance(answer, SubmitResponse) and isinstance(answer.job, JobView)
            job_id = answer.job.id
            final = client.wait(job_id, timeout=120)
            assert isinstance(final, JobView) and final.state == "succeeded" and final.exit_code == 0
            assert isinstance(client.status(job_id), JobView)
            listed = client.list()
            assert [type(job) for job in listed] == [JobView] and listed[0].id == job_id
            batch = client.batch("batch-typed-1")
            assert isinstance(batch, BatchView) and batch.finished and [j.id for j in batch.jobs] == [job_id]
            page = client.logs(job_id)
            assert isinstance(page, LogPage) and "line 2" in page.data and page.eof
            artifacts = client.artifacts(job_id)
            assert artifacts and all(isinstance(item, ArtifactInfo) for item in artifacts)
            info = client.server_info()
            assert isinstance(info, ServerInfo) and info.slots >= 1
            sleeper = client.submit(template="script", params={"mode": "sleep", "arg": "60"}).job.id
            assert isinstance(client.cancel(sleeper), JobView)
    finally:
        srv.stop()


def test_a_field_reads_by_name_too_and_an_unknown_name_is_a_key_error(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    try:
        with Client(srv.url, srv.tokens["alice"]) as client:
            answer = client.submit(template="script", params={"mode": "lines", "arg": "1"})
            assert answer["job"]["id"] == answer.job.id
            with pytest.raises(KeyError):
                answer["no_such_field"]
            client.wait(answer.job.id, timeout=120)
    finally:
        srv.stop()


class _WrongShape(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        body = json.dumps({"unexpected": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def wrong_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WrongShape)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_an_answer_of_another_shape_is_one_clear_error(wrong_server: str) -> None:
    with Client(wrong_server, "pt_x") as client, pytest.raises(ProctorError, match="is not a JobView") as caught:
        client.status("job-12345678")
    assert "\n" not in caught.value.message


def test_the_client_does_not_load_the_server() -> None:
    code = "import sys, proctor.client; print(sorted(m for m in sys.modules if m.startswith('proctor.server')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout
