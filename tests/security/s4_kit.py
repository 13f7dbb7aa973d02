"""What the s4 front-door attacks (``test_s4_*.py``) share: the normal client they must not lock out."""

from __future__ import annotations

import time

import httpx
from security.frontdoor_kit import Served


def normal_client_served(srv: Served, *, within: float) -> bool:
    """Whether bob's ``GET /v1/jobs`` is answered 200 within ``within`` seconds (bounded retries:
    a connection shed while every one was busy is tried again)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with srv.client("bob", timeout=10) as bob:
                if bob.get("/v1/jobs").status_code == 200:
                    return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False
