"""Prometheus metrics: the server's own counts, exposed through ``prometheus-client``.

The scheduler and the middleware keep plain counts (an increment on the hot path, no lock); a
collector turns them into metric families at scrape time, in one registry per app (several apps
in one process, as in the tests, never share series), next to the library's process collector
(open file descriptors, memory, CPU). Request latency is recorded per route template
(``/v1/jobs/{job_id}``), never per concrete path, so job ids do not blow up the label set.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics(Collector):
    def __init__(self) -> None:
        self.outcomes: dict[str, int] = defaultdict(int)
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency_buckets: dict[tuple[str, str], list[int]] = {}
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)
        self.submitted = 0
        self._gauges: dict[str, int] = {}
        self._channel_answers: Mapping[int, int] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

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
        self._gauges = {
            "queue_length": queued,
            "jobs_running": running,
            "jobs_waiting_for_credentials": waiting,
            "jobs_waiting_for_tunnel": waiting_tunnel,
            "slots": slots,
        }
        self._channel_answers = channel_answers
        return generate_latest(self.registry).decode("utf-8")

    def collect(self) -> Iterator[Metric]:
        """The server's series from its own counts (read at scrape time; the scheduler keeps them)."""
        for name, value in self._gauges.items():
            yield GaugeMetricFamily(f"proctor_{name}", _GAUGE_HELP[name], value=value)
        yield CounterMetricFamily(
            "proctor_jobs_submitted", "Jobs accepted since the server started.", value=self.submitted
        )
        outcomes = CounterMetricFamily("proctor_job_outcomes", "Jobs that ended, by final state.", labels=["state"])
        for state in ("succeeded", "failed", "cancelled", "timed_out"):
            outcomes.add_metric([state], self.outcomes.get(state, 0))
        yield outcomes
        requests = CounterMetricFamily(
            "proctor_http_requests", "HTTP requests by route template and status.", labels=["method", "route", "status"]
        )
        for labels, n in sorted(self.requests.items()):
            requests.add_metric(list(labels), n)
        yield requests
        latency = HistogramMetricFamily(
            "proctor_http_request_duration_seconds",
            "HTTP request latency (SSE: until the stream ends).",
            labels=["method", "route"],
        )
        for key, counts in sorted(self.latency_buckets.items()):
            buckets = [(str(bound), float(n)) for bound, n in zip(BUCKETS, counts, strict=True)]
            buckets.append(("+Inf", float(self.latency_count[key])))
            latency.add_metric(list(key), buckets, sum_value=self.latency_sum[key])
        yield latency
        if self._channel_answers is not None:
            channel = CounterMetricFamily(
                "proctor_private_channel_calls",
                "Private-mode model calls of proctor jobs by status.",
                labels=["status"],
            )
            for code, n in sorted(self._channel_answers.items()):
                channel.add_metric([str(code)], n)
            yield channel


_GAUGE_HELP = {
    "queue_length": "Jobs waiting for a slot.",
    "jobs_running": "Jobs holding a slot.",
    "jobs_waiting_for_credentials": "Jobs waiting for their owner to re-supply keys.",
    "jobs_waiting_for_tunnel": "Private-mode jobs (holding a slot) whose submitter's tunnel is gone.",
    "slots": "Concurrent job slots.",
}


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
