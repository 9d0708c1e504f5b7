"""Prometheus metrics of one service (``GET /metrics``), on a registry of its own.

Each :class:`ServiceMetrics` has its own ``prometheus_client.CollectorRegistry`` (never the
process-wide default), so several services in one process (tests, notebooks) keep separate counts.
Every name starts with ``threadsum_``; the list, with units and labels, is in docs/serving.md. Times
are seconds, sizes are threads (one thread = one summary asked for).

- per HTTP request: ``threadsum_requests_total{endpoint,method,status}``,
  ``threadsum_request_duration_seconds{endpoint}``, ``threadsum_requests_in_flight``
- per thread: ``threadsum_queue_wait_seconds`` (accepted -> its batch starts),
  ``threadsum_threads_total{status}`` (200 / 422 / 500 per thread, batch endpoints included),
  ``threadsum_queue_depth`` (waiting for a batch), ``threadsum_threads_pending`` (accepted, not yet
  answered: what ``serve.queue_size`` bounds)
- per batch: ``threadsum_inference_duration_seconds``, ``threadsum_batch_size``,
  ``threadsum_batch_failures_total``
- per summary: ``threadsum_summaries_total``, ``threadsum_summaries_with_unsupported_claims_total``,
  ``threadsum_claims_total{kind,supported}``
- the service: ``threadsum_info`` (model, engine, device, dtype, allocator, version), ``threadsum_ready``,
  ``threadsum_draining``, ``threadsum_malloc_trims_total``, ``threadsum_malloc_trim_seconds_total``, and
  the process collector's ``threadsum_process_resident_memory_bytes`` and friends (Linux).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

from threadsum.deps import require

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Histogram bounds in seconds: from a tiny model's few ms to a large model's beam search on a CPU."""

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
"""Histogram bounds of threads per batch (``serve.max_batch_size`` is 16 by default)."""

OTHER_ENDPOINT = "other"
"""The ``endpoint`` label of a request that matched no route (keeps the label set bounded)."""


class ServiceMetrics:
    """The metrics of one service and the calls that update them (see the module docstring).

    Raises MissingExtraError when prometheus-client is not installed (``pip install 'threadsum[serve]'``).
    """

    def __init__(self) -> None:
        require("prometheus_client", "serve")
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("threadsum_requests", "HTTP requests answered, by route, method and status code.",
                                ["endpoint", "method", "status"], registry=r)
        self.request_seconds = Histogram("threadsum_request_duration_seconds", "Seconds from a request's "
                                         "arrival to its answer, by route.", ["endpoint"], buckets=LATENCY_BUCKETS,
                                         registry=r)
        self.in_flight = Gauge("threadsum_requests_in_flight", "HTTP requests being handled now.", registry=r)
        self.queue_wait = Histogram("threadsum_queue_wait_seconds", "Seconds a thread waited from being accepted "
                                    "by the batcher to the start of its batch.", buckets=LATENCY_BUCKETS, registry=r)
        self.threads = Counter("threadsum_threads", "Threads answered, by their own status (200, 422 refused "
                               "input, 500 generation failed or empty summary).", ["status"], registry=r)
        self.queue_depth = Gauge("threadsum_queue_depth", "Threads waiting for a batch.", registry=r)
        self.pending = Gauge("threadsum_threads_pending", "Threads accepted and not yet answered (queued plus "
                             "generating); above serve.queue_size new work gets 503.", registry=r)
        self.inference_seconds = Histogram("threadsum_inference_duration_seconds", "Seconds one batch spent "
                                           "in the engine's generate.", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("threadsum_batch_size", "Threads per generated batch.", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_failures = Counter("threadsum_batch_failures", "Batches whose generation raised (their "
                                      "threads are retried one at a time).", registry=r)
        self.summaries = Counter("threadsum_summaries", "Summaries returned (status 200).", registry=r)
        self.unsupported = Counter("threadsum_summaries_with_unsupported_claims", "Summaries returned with at "
                                   "least one claim the thread does not support (threadsum.verify).", registry=r)
        self.claims = Counter("threadsum_claims", "Claims of returned summaries, by kind and whether the "
                              "thread supports them.", ["kind", "supported"], registry=r)
        self.info = Info("threadsum", "The served model and the process: model, engine, device, dtype, "
                         "allocator, version.", registry=r)
        self.ready = Gauge("threadsum_ready", "1 when the model is warmed up and the batch worker runs.", registry=r)
        self.draining = Gauge("threadsum_draining", "1 while the service drains (after SIGTERM): new work gets 503.",
                              registry=r)
        self.trims = Counter("threadsum_malloc_trims", "glibc malloc_trim(0) calls made after batches.", registry=r)
        self.trim_seconds = Counter("threadsum_malloc_trim_seconds", "Seconds spent in malloc_trim.", registry=r)
        ProcessCollector(namespace="threadsum", registry=r)

    # ---- wiring
    def track_queue(self, queued: Callable[[], int], pending: Callable[[], int]) -> None:
        """Read the queue gauges from these callables at scrape time (the batcher's counts)."""
        self.queue_depth.set_function(queued)
        self.pending.set_function(pending)

    def describe(self, info: Mapping[str, Any]) -> None:
        """Set ``threadsum_info`` from ``info`` (values as strings; None as '')."""
        self.info.info({k: "" if v is None else str(v) for k, v in info.items()})

    # ---- updates
    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request and its latency in seconds."""
        self.requests.labels(endpoint, method, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float, failed: bool, waits_s: Iterable[float] = ()) -> None:
        """One generate call of ``size`` threads that took ``seconds``; ``waits_s``: each thread's queue wait."""
        for w in waits_s:
            self.queue_wait.observe(w)
        if failed:
            self.batch_failures.inc()
            return
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def observe_trim(self, seconds: Optional[float]) -> None:
        """One malloc_trim call that took ``seconds`` (None: none was made)."""
        if seconds is not None:
            self.trims.inc()
            self.trim_seconds.inc(seconds)

    def observe_thread(self, status: int, claims: Iterable[Mapping[str, Any]] = ()) -> None:
        """One thread's answer: its status and, for a summary (200), its claims (``Claim.to_dict()`` form)."""
        self.threads.labels(str(status)).inc()
        if status != 200:
            return
        self.summaries.inc()
        unsupported = False
        for c in claims:
            supported = bool(c.get("supported"))
            unsupported |= not supported
            self.claims.labels(str(c.get("kind", "")), "true" if supported else "false").inc()
        if unsupported:
            self.unsupported.inc()

    def exposition(self, accept: Optional[str]) -> tuple[bytes, str]:
        """(body, content type) of a scrape: OpenMetrics when ``accept`` asks for it, else the text format."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
