"""Prometheus metrics, in the text exposition format written by hand.

A dozen series do not justify a dependency; the format is four lines of spec. Request latency
is recorded per route template (``/v1/jobs/{job_id}``), never per concrete path, so job ids do
not blow up the label set.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.outcomes: dict[str, int] = defaultdict(int)
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency_buckets: dict[tuple[str, str], list[int]] = {}
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)
        self.submitted = 0

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, str(status))] += 1
        key = (method, route)
        buckets = self.latency_buckets.setdefault(key, [0] * len(BUCKETS))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                buckets[i] += 1
        self.latency_sum[key] += seconds
        self.latency_count[key] += 1

    def render(
        self,
        *,
        queued: int,
        running: int,
        slots: int,
        waiting: int,
        waiting_tunnel: int = 0,
        channel_answers: Mapping[int, int] | None = None,
    ) -> str:
        """The exposition text; ``channel_answers`` counts private calls of proctor jobs by status
        (they travel over the job channel, a WebSocket, so the HTTP series do not see them)."""
        lines = [
            "# HELP proctor_queue_length Jobs waiting for a slot.",
            "# TYPE proctor_queue_length gauge",
            f"proctor_queue_length {queued}",
            "# HELP proctor_jobs_running Jobs holding a slot.",
            "# TYPE proctor_jobs_running gauge",
            f"proctor_jobs_running {running}",
            "# HELP proctor_jobs_waiting_for_credentials Jobs waiting for their owner to re-supply keys.",
            "# TYPE proctor_jobs_waiting_for_credentials gauge",
            f"proctor_jobs_waiting_for_credentials {waiting}",
            "# HELP proctor_jobs_waiting_for_tunnel Private-mode jobs (holding a slot) whose submitter's tunnel is gone.",
            "# TYPE proctor_jobs_waiting_for_tunnel gauge",
            f"proctor_jobs_waiting_for_tunnel {waiting_tunnel}",
            "# HELP proctor_slots Concurrent job slots.",
            "# TYPE proctor_slots gauge",
            f"proctor_slots {slots}",
            "# HELP proctor_jobs_submitted_total Jobs accepted since the server started.",
            "# TYPE proctor_jobs_submitted_total counter",
            f"proctor_jobs_submitted_total {self.submitted}",
            "# HELP proctor_job_outcomes_total Jobs that ended, by final state.",
            "# TYPE proctor_job_outcomes_total counter",
        ]
        for state in ("succeeded", "failed", "cancelled", "timed_out"):
            lines.append(f'proctor_job_outcomes_total{{state="{state}"}} {self.outcomes.get(state, 0)}')
        lines += [
            "# HELP proctor_http_requests_total HTTP requests by route template and status.",
            "# TYPE proctor_http_requests_total counter",
        ]
        for (method, route, status), n in sorted(self.requests.items()):
            lines.append(
                f'proctor_http_requests_total{{method="{method}",route="{_esc(route)}",status="{status}"}} {n}'
            )
        lines += [
            "# HELP proctor_http_request_duration_seconds HTTP request latency (SSE: until the stream ends).",
            "# TYPE proctor_http_request_duration_seconds histogram",
        ]
        for (method, route), buckets in sorted(self.latency_buckets.items()):
            labels = f'method="{method}",route="{_esc(route)}"'
            for bound, n in zip(BUCKETS, buckets, strict=True):
                lines.append(f'proctor_http_request_duration_seconds_bucket{{{labels},le="{bound}"}} {n}')
            count = self.latency_count[(method, route)]
            lines.append(f'proctor_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {count}')
            lines.append(
                f"proctor_http_request_duration_seconds_sum{{{labels}}} {self.latency_sum[(method, route)]:.6f}"
            )
            lines.append(f"proctor_http_request_duration_seconds_count{{{labels}}} {count}")
        if channel_answers is not None:
            lines += [
                "# HELP proctor_private_channel_calls_total Private-mode model calls of proctor jobs by status.",
                "# TYPE proctor_private_channel_calls_total counter",
            ]
            for code, n in sorted(channel_answers.items()):
                lines.append(f'proctor_private_channel_calls_total{{status="{code}"}} {n}')
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class MetricsMiddleware:
    """Pure ASGI (not ``BaseHTTPMiddleware``), so streaming responses pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics, route_of: Callable[[Scope], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(scope["method"], self.route_of(scope), status, time.perf_counter() - start)
