"""Issue 17, item 2: X-Forwarded-For is believed only from the proxies the config lists.

Filed: uvicorn's default trusts it from 127.0.0.1, so every job on the server's machine could
dodge per-IP quotas and act as any open-mode user.
"""

from __future__ import annotations

from pathlib import Path

from security.frontdoor_kit import served

SPOOF = {"X-Forwarded-For": "10.9.8.7", "X-Forwarded-Proto": "https"}


def test_forwarded_for_ignored_by_default(tmp_path: Path) -> None:
    with served(tmp_path, {"open": True}) as srv, srv.client(None) as anyone:
        assert anyone.get("/v1/server", headers=SPOOF).json()["you"] == "ip:127.0.0.1"
        # A second identity through the header would give a second quota: it must not.
        answer = anyone.get("/v1/server", headers={"X-Forwarded-For": "10.0.0.2"})
        assert answer.json()["you"] == "ip:127.0.0.1"


def test_forwarded_for_honoured_from_a_listed_proxy(tmp_path: Path) -> None:
    with served(tmp_path, {"open": True, "trusted_proxies": ["127.0.0.1/32"]}) as srv, srv.client(None) as proxy:
        assert proxy.get("/v1/server", headers=SPOOF).json()["you"] == "ip:10.9.8.7"
