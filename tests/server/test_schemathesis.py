"""Property-based fuzzing of the whole API from its own /openapi.json: no request may cause a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import start_server


def test_no_server_errors(tmp_path) -> None:
    srv = start_server(tmp_path / "data", queue_max=5)
    try:
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
        strategy = schema.as_strategy()
        seen: list[int] = []
        failures: list[str] = []
        headers = {"Authorization": f"Bearer {srv.tokens['root']}"}

        @settings(
            max_examples=600,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(case=strategy, authenticated=st.booleans())
        def check(case: schemathesis.Case, authenticated: bool) -> None:
            response = case.call(base_url=srv.url, headers=headers if authenticated else {}, timeout=10)
            seen.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

        check()
        assert failures == []
        assert len(seen) >= 500
    finally:
        srv.stop()
