"""The HTTP service: FastAPI app factory and the `threadsum serve` entry point.

No model logic lives here: requests are read and checked by ``threadsum.inference.inputs`` through
``Summarizer.prepare`` (the training clean/render path), and generation goes through the
``MicroBatcher``. Status codes a client can act on:

- 200 summary (``/v1/summarize``), or per-thread results (``/v1/summarize/batch``, below)
- 401 missing/wrong X-API-Key (only when serve.api_key is set), checked before the body is read
- 413 body larger than serve.max_body_bytes
- 422 the request cannot be used: the body is not UTF-8, not JSON ("... at line L, column C
  (character position N)"), nested too deeply, fails the schema, is over serve.max_emails /
  serve.max_chars / serve.max_batch_threads, or its thread has no body text after cleaning;
  ``detail`` names the problem and where
- 500 generation failed, or the model produced an empty summary (never reported as a success)
- 503 + Retry-After: more than serve.queue_size threads pending, or the model is warming up

Batch answers: a well-formed batch gets 200 with one item per thread in request order, each with
``status`` 200 (``summary`` set, ``error`` null) or the status that thread alone would have got
(422 refused input, 500 generation failed or empty summary) with ``error`` naming the problem, so
one bad thread never sinks the others. Text repairs (lone surrogates replaced by U+FFFD) are listed
in ``warnings``. A client that disconnects has its queued threads withdrawn (never generated).

``/healthz`` and ``/readyz`` are public and say only alive / ready; model, device, versions,
limits and batching statistics are at ``/v1/status`` and Prometheus metrics at ``/metrics``
(:mod:`threadsum.serve.metrics`), both behind the key when one is set.

Everything the routes share (the Summarizer, the batcher, metrics, the heap trimmer, readiness and
the drain) is one :class:`Service`, built from a model folder by :func:`load_service`;
:func:`service_app` puts the shared middleware, health checks and ``/metrics`` around it, so other
route sets (a container contract's) reuse the batcher, the metrics and the drain as they are.

Stopping (``threadsum serve``, :func:`run_server`): the first SIGTERM or SIGINT starts a drain. New
work (every POST) is answered 503 with ``Retry-After`` and ``Connection: close``, ``/readyz`` turns
503 so load balancers stop routing here, and the requests already accepted (queued or being
generated) are finished; the process then exits 0. When ``serve.drain_timeout_s`` (30 s, what
SageMaker and Kubernetes allow) passes first, the unfinished requests are logged and the process
exits 1. A second signal stops at once (uvicorn's own shutdown).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import signal
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Union

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from starlette.concurrency import run_in_threadpool

from threadsum.config import Config, ServeConfig
from threadsum.inference.inputs import (
    TEXT_PATTERN,
    InputError,
    repair_json,
    thread_from_text,
    threads_from_text,
)
from threadsum.inference.summarizer import EmptySummaryError, grounding_of
from threadsum.errors import DrainTimeoutError
from threadsum.serve.batching import BatcherStoppedError, MicroBatcher, QueueFullError
from threadsum.serve.memory import HeapTrimmer, active_allocator
from threadsum.serve.metrics import OTHER_ENDPOINT, ServiceMetrics

if TYPE_CHECKING:  # pragma: no cover
    from threadsum.data.types import Thread
    from threadsum.inference.summarizer import PreparedInput, Summarizer

log = logging.getLogger("threadsum.serve")

PROTECTED_PREFIX = "/v1/"
"""Routes under this prefix need X-API-Key when serve.api_key is set (and ``PROTECTED_PATHS``)."""

PROTECTED_PATHS = ("/metrics",)
"""Routes outside ``PROTECTED_PREFIX`` that need the key too (metrics reveal traffic and the model)."""

DRAIN_RETRY_AFTER_S = 1
"""Retry-After (seconds) of work refused while draining: another replica can take it at once."""


def is_protected(path: str) -> bool:
    """True for a path that needs X-API-Key when serve.api_key is set."""
    return path.startswith(PROTECTED_PREFIX) or path in PROTECTED_PATHS

CLIENT_GONE = 499
"""Status logged for a request whose client disconnected before its answer (nginx's convention)."""

TOO_LARGE_ADVICE = "send a shorter thread or raise the limit"
"""The fix a 413 answer names (``create_app(too_large_advice=...)`` replaces it)."""


# ------------------------------------------------------------------------------------ schemas
_ONE_OF = {"oneOf": [{"required": ["emails"]}, {"required": ["text"]}]}


class EmailIn(BaseModel):
    """One email of a request thread; unknown fields are ignored and ``from`` may be sent as ``sender``."""
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    sender: str = Field("", alias="from", description="Author: display name and/or address.")
    to: Union[list[str], str] = Field(default_factory=list, description="Recipients (list, or comma-separated).")
    cc: Union[list[str], str] = Field(default_factory=list, description="Cc recipients.")
    date: Union[StrictStr, StrictInt, StrictFloat, None] = Field(None, description=(
        "ISO 8601, RFC 2822 or epoch seconds. A date that is not understood leaves the email undated, with a warning."))
    subject: str = ""
    body: str = Field(..., min_length=1, pattern=TEXT_PATTERN, description=(
        "Plain-text body holding a letter or digit. A thread whose bodies hold no word character after cleaning (whitespace, HTML "
        "tags/entities, quoted history or signatures only) is refused with 422."))


class ThreadIn(BaseModel):
    """One thread: exactly one of ``emails`` (structured) or ``text`` (pasted thread, .eml content)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_ONE_OF)

    thread_id: Union[StrictStr, StrictInt, None] = Field(None, description="Kept in the answer; default: derived from the content.")
    subject: str = Field("", description="Kept in the answer; default: the first email's subject.")
    emails: list[EmailIn] = Field(None, min_length=1, description="The thread's emails, in any order.")
    text: str = Field(None, min_length=1, pattern=TEXT_PATTERN, description=(
        "Plain text of a thread (holding a letter or digit; refused with 422 when nothing is left after cleaning), pasted emails each with its From:/To:/Subject: header block, or an RFC 822 "
        "message (.eml content). Several threads (an mbox) go to /v1/summarize/batch."))

    @model_validator(mode="after")
    def _one_form(self) -> "ThreadIn":
        if (self.emails is None) == (self.text is None):
            raise ValueError("give exactly one of 'emails' (a list of {from, to, date, body}) or 'text'")
        return self

    def size(self) -> tuple[int, int]:
        """(emails, characters) as counted against the limits."""
        if self.text is not None:
            return 1, len(self.text)
        return len(self.emails or []), sum(len(e.body) + len(e.subject) for e in self.emails or [])

    def to_input(self) -> Union["Thread", dict]:
        """What ``Summarizer.prepare`` reads; the given thread_id and subject are kept for text too."""
        if self.text is not None:
            return thread_from_text(self.text, self.thread_id, self.subject or None)
        return self.model_dump(by_alias=True, exclude={"text"})


class BatchIn(BaseModel):
    """Exactly one of ``threads`` or ``text`` (an mbox or pasted text, split into threads here)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"oneOf": [{"required": ["threads"]},
                                                                           {"required": ["text"]}]})

    threads: list[ThreadIn] = Field(None, min_length=1, description="Threads, answered in this order.")
    text: str = Field(None, min_length=1, pattern=TEXT_PATTERN, description="An .mbox file's content (or pasted mail): one result per thread.")

    @model_validator(mode="after")
    def _one_form(self) -> "BatchIn":
        if (self.threads is None) == (self.text is None):
            raise ValueError("give exactly one of 'threads' (a list of threads) or 'text' (an mbox)")
        return self


CLAIMS_DOC = ("People, organisations, amounts, numbers, dates, times, weekdays and actions of the summary, each "
              "checked against the thread (threadsum.verify): unsupported ones are what a reader should check.")

COVERAGE_DOC = ("What the summary left out (threadsum.verify.coverage): {left_out: important facts of the thread "
                "it does not carry, important: their count, carried_share: 0-1}.")


class ClaimOut(BaseModel):
    """A span of the summary (``summary[start:end] == text``) and whether the thread supports it."""

    text: str
    kind: str = Field(description="person, organisation, money, number, percent, date, time, weekday or action.")
    supported: bool
    evidence: Optional[dict[str, Any]] = Field(None, description="{email: index in the thread, line: the supporting line}.")
    start: int = Field(description="Character offset of the span in the summary.")
    end: int
    reason: Optional[str] = Field(None, description="Why the claim is not supported (or how it was matched).")


class SummaryOut(BaseModel):
    """The answer to one summarized thread."""
    thread_id: str
    subject: str
    summary: str = Field(description="Never empty: an empty model output is a 500.")
    n_emails: int = Field(description="Emails after cleaning (exact duplicates dropped).")
    truncated: bool = Field(description="True when the thread was cut to fit the model's input window.")
    warnings: list[str] = Field(default_factory=list, description="Repairs made to the input, one line each.")
    claims: list["ClaimOut"] = Field(default_factory=list, description=CLAIMS_DOC)
    coverage: dict[str, Any] = Field(default_factory=dict, description=COVERAGE_DOC)
    elapsed_ms: float = Field(description="Server time for this request, queueing included.")


class BatchItemOut(BaseModel):
    """One thread's answer in a batch: ``status`` 200 with a summary, or a 4xx/5xx with ``error``."""

    index: int = Field(description="Position of the thread in the request (or in the mbox).")
    status: int = Field(description="200 ok; 422 input refused; 500 generation failed or empty summary.")
    thread_id: Optional[str] = None
    subject: Optional[str] = None
    summary: Optional[str] = Field(None, description="Set (non-empty) when status is 200.")
    n_emails: Optional[int] = None
    truncated: Optional[bool] = None
    warnings: list[str] = Field(default_factory=list)
    claims: list["ClaimOut"] = Field(default_factory=list, description=CLAIMS_DOC)
    coverage: dict[str, Any] = Field(default_factory=dict, description=COVERAGE_DOC)
    error: Optional[str] = Field(None, description="What went wrong, when status is not 200.")


class BatchOut(BaseModel):
    """The answer to a batch: one result per thread in request order, the counts of successes and
    failures, and the server time in milliseconds.
    """
    results: list[BatchItemOut]
    n_ok: int
    n_failed: int
    elapsed_ms: float


class ErrorOut(BaseModel):
    """An error answer: ``detail`` names the problem and the fix."""
    detail: str


class StatusOut(BaseModel):
    """A health check answer (``ok`` for liveness, ``ready`` for readiness)."""
    status: str


class SafeJSONResponse(JSONResponse):
    """JSON that never fails to encode: text that is not valid Unicode is written as '?'."""

    def render(self, content: Any) -> bytes:
        """Compact UTF-8 JSON; NaN and infinity raise ValueError (``allow_nan=False``)."""
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8", "replace")


# --------------------------------------------------------------------------------- middleware
async def _send_json(scope, send, status: int, detail: str, errors: Optional[list] = None) -> None:
    body = {"detail": detail} if errors is None else {"detail": detail, "errors": errors}
    await SafeJSONResponse(body, status_code=status)(scope, _no_receive, send)


async def _no_receive():  # pragma: no cover - a plain JSON response never reads the request
    return {"type": "http.disconnect"}


def _is_json(scope) -> bool:
    """FastAPI's rule for parsing a body as JSON: no Content-Type, or application/json or */*+json."""
    ctype = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
    return not ctype or ctype == b"application/json" or (ctype.startswith(b"application/") and ctype.endswith(b"+json"))


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def repaired_body(body: bytes) -> tuple[bytes, list[str]]:
    """The body with lone surrogate escapes (``\\ud800``) replaced by U+FFFD, and one warning per field.

    Pydantic refuses such strings outright, which would fail a whole batch for one thread; repaired
    here, each thread carries its own warning (``threads[i].`` paths are split per thread later).
    """
    if not _SURROGATE_ESCAPE.search(body):
        return body, []
    warnings: list[str] = []
    fixed = repair_json(json.loads(body), "", warnings)
    if not warnings:
        return body, []
    return json.dumps(fixed, ensure_ascii=False).encode("utf-8"), warnings


def body_problem(body: bytes) -> Optional[tuple[str, str]]:
    """(error type, message naming the problem and where) for a body that is not UTF-8 JSON, else None."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "utf8_invalid", (f"the body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at byte offset "
                                f"{exc.start}); send JSON encoded as UTF-8")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return "json_invalid", (f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
                                f"(character position {exc.pos})")
    except RecursionError:
        return "json_too_deep", "the body is JSON nested too deeply to read; a request nests at most 4 levels"
    return None


class BodyLimitMiddleware:
    """413 for bodies over the limit, checked before any parsing (chunked bodies included); 422 for
    JSON bodies that are not UTF-8 JSON (``body_problem``), before FastAPI parses them.

    The body is buffered (at most the limit, 1 MB by default) so the check does not depend on the
    client sending Content-Length.
    """

    def __init__(self, app, max_bytes: int, advice: str = TOO_LARGE_ADVICE):
        self.app = app
        self.max_bytes = max_bytes
        self.advice = advice

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, send, int(declared))
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await self._too_large(scope, send, total)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        scope.setdefault("state", {})["body_bytes"] = len(body)
        if body and _is_json(scope) and scope["path"].startswith(PROTECTED_PREFIX):
            problem = body_problem(body)
            if problem is not None:
                kind, detail = problem
                return await _send_json(scope, send, 422, detail, [{"loc": ["body"], "msg": detail, "type": kind}])
            body, repairs = repaired_body(body)
            scope["state"]["repairs"] = repairs
        sent = False

        async def replay():
            nonlocal sent, body
            if not sent:
                sent = True
                message = {"type": "http.request", "body": body, "more_body": False}
                body = b""  # the app holds the only reference from here on
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, send, size: int):
        await _send_json(scope, send, 413, f"request body of {size} bytes or more exceeds serve.max_body_bytes="
                                    f"{self.max_bytes}; {self.advice}")


class APIKeyMiddleware:
    """401 for protected routes without the right X-API-Key, before any byte of the body is read."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and is_protected(scope["path"]) and scope["method"] != "OPTIONS":
            given = dict(scope["headers"]).get(b"x-api-key")
            if given is None or not hmac.compare_digest(given, self.key):
                return await _send_json(scope, send, 401, "missing or wrong X-API-Key header (this service has "
                                                   "serve.api_key set)")
        return await self.app(scope, receive, send)


class RequestLogMiddleware:
    """One log line per request: method, path, status, time, body size. Never bodies or headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}
        request_id = uuid.uuid4().hex[:12]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info(
                "%s %s %s %.1fms in=%sB client=%s id=%s",
                scope["method"], scope["path"], status["code"], (time.perf_counter() - t0) * 1000,
                scope.get("state", {}).get("body_bytes", 0), client[0], request_id,
            )


def endpoint_label(scope) -> str:
    """The ``endpoint`` metric label of a request: its route's path, or ``other`` for unknown paths
    (a scanner's random paths must not create one time series each)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    app = scope.get("app")
    known = {getattr(r, "path", None) for r in getattr(app, "routes", ())}
    return scope["path"] if scope["path"] in known else OTHER_ENDPOINT


class ServiceMiddleware:
    """Counts every request (metrics, in-flight) and refuses new work while the service drains.

    While draining, a POST (all work is POSTed) gets 503 with Retry-After and ``Connection: close``
    before any byte of its body is read: it was never accepted, so nothing of it is lost.
    """

    def __init__(self, app, service: "Service"):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        service, metrics = self.service, self.service.metrics
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        if service.draining and scope["method"] == "POST":
            body = json.dumps({"detail": "the service is shutting down; retry on another replica"}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", str(DRAIN_RETRY_AFTER_S).encode()),
                (b"connection", b"close"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            service.refused_while_draining += 1
            metrics.observe_request(endpoint_label(scope), scope["method"], 503, time.perf_counter() - t0)
            return
        service.in_flight += 1
        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            service.in_flight -= 1
            metrics.in_flight.dec()
            metrics.observe_request(endpoint_label(scope), scope["method"], status["code"], time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ the app
class Service:
    """What every route of one service shares: the Summarizer, the :class:`MicroBatcher` that
    routes submit rendered threads to (``service.batcher.submit``), the metrics, the heap trimmer,
    readiness and the drain.

    ``lifespan`` starts the batcher and the warm-up and stops them; ``draining`` is set by the first
    SIGTERM (:func:`run_server`) or :meth:`begin_drain`; ``idle`` says all accepted work is answered.
    """

    def __init__(self, summarizer: "Summarizer", cfg: ServeConfig):
        self.summarizer = summarizer
        self.cfg = cfg
        self.metrics = ServiceMetrics()
        self.trimmer = HeapTrimmer(cfg.malloc_trim_interval_s, cfg.malloc_trim_growth_mb)
        self.batcher = MicroBatcher(
            partial(summarizer.generate, batch_size=cfg.max_batch_size),
            max_batch_size=cfg.max_batch_size,
            max_wait_ms=cfg.max_wait_ms,
            queue_size=cfg.queue_size,
            after_batch=self.trimmer.maybe_trim,
            on_batch=self.metrics.observe_batch,
        )
        self.batcher.on_after_batch = self.metrics.observe_trim
        self.metrics.track_queue(lambda: self.batcher.queued, lambda: self.batcher.pending)
        self.metrics.describe({**summarizer.info(), "allocator": active_allocator(), "version": _version()})
        self.ready = False
        self.warmup_s: Optional[float] = None
        self.started = time.time()
        self.draining = False
        """Set (only) by :meth:`begin_drain` or the signal handler; POSTs are refused from then on."""
        self.drain_started: Optional[float] = None
        self.in_flight = 0
        """HTTP requests being handled (ServiceMiddleware)."""
        self.refused_while_draining = 0
        self._warm_task: Optional[asyncio.Task] = None

    @property
    def accepting(self) -> bool:
        """True when new work is taken: warmed up, the batch worker running, not draining."""
        return self.ready and self.batcher.running and not self.draining

    @property
    def idle(self) -> bool:
        """True when no request is being handled and no thread is queued or generating."""
        return self.in_flight == 0 and self.batcher.pending == 0

    def begin_drain(self) -> None:
        """Refuse new work from now on (503); accepted work goes on. Safe to call more than once."""
        self.draining = True
        if self.drain_started is None:
            self.drain_started = time.monotonic()
        self.metrics.draining.set(1)
        self.metrics.ready.set(0)

    async def drain(self, timeout_s: float, poll_s: float = 0.05) -> bool:
        """:meth:`begin_drain`, then wait until :attr:`idle` or ``timeout_s`` seconds pass; True when idle."""
        self.begin_drain()
        deadline = time.monotonic() + timeout_s
        while not self.idle:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    async def start(self) -> None:
        """Start the batch worker and, in the background, the warm-up (``ready`` once it is done)."""
        await self.batcher.start()
        self._warm_task = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            if self.cfg.warmup:
                self.warmup_s = await self.batcher.run_in_worker(self.summarizer.warmup)
            self.ready = True
            self.metrics.ready.set(0 if self.draining else 1)
            log.info("model ready: %s", json.dumps({**self.summarizer.info(), **self.trimmer.describe()}))
        except Exception as exc:  # noqa: BLE001 - readiness stays false; the log says why
            log.error("warm-up generation failed: %s: %s", type(exc).__name__, exc)

    async def stop(self) -> None:
        """Stop the warm-up and the batch worker (queued threads fail with BatcherStoppedError: 503)."""
        self.ready = False
        self.metrics.ready.set(0)
        if self._warm_task is not None:
            self._warm_task.cancel()
        await self.batcher.stop()

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        """The app's lifespan: :meth:`start` on startup, :meth:`stop` on shutdown."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def status(self) -> dict[str, Any]:
        """What ``/v1/status`` reports: readiness, uptime, model, batching, memory and drain state."""
        cfg = self.cfg
        return {"status": "ready" if self.accepting else ("draining" if self.draining else "not ready"),
                "uptime_s": round(time.time() - self.started, 1), "warmup_s": round(self.warmup_s or 0.0, 3),
                **self.summarizer.info(), "max_batch_size": cfg.max_batch_size, "auth": cfg.api_key is not None,
                "pending": self.batcher.pending, "batching": self.batcher.stats.to_dict(),
                "memory": self.trimmer.describe(),
                "limits": {"max_body_bytes": cfg.max_body_bytes, "max_emails": cfg.max_emails,
                           "max_chars": cfg.max_chars, "max_batch_threads": cfg.max_batch_threads}}


def load_service(model_dir: str, cfg: ServeConfig, overrides: Sequence[str] = ()) -> Service:
    """The :class:`Service` around the model folder ``model_dir``, loaded on ``cfg.device`` in ``cfg.dtype``
    (the engine is the folder's config's ``inference.engine``; see ``Summarizer.from_pretrained``).

    The model decodes with the config saved beside it plus the ``key=value`` ``overrides`` outside
    ``serve.`` (``eval.generation.num_beams=2``, ``inference.threads=1``:
    :func:`threadsum.inference.summarizer.saved_config_with`); ``serve.`` keys are ``cfg``'s already.

    Raises ModelLoadError, ConfigError, DeviceError or MissingExtraError as ``from_pretrained`` does.
    """
    from threadsum.inference.summarizer import Summarizer, quiet_loading, saved_config_with

    quiet_loading()
    model_side = [o for o in overrides if not o.strip().startswith("serve.")]
    config = saved_config_with(model_dir, model_side) if model_side else None
    return Service(Summarizer.from_pretrained(model_dir, device=cfg.device, dtype=cfg.dtype, config=config), cfg)


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, retry_after: Optional[int] = None):
        self.status, self.detail, self.retry_after = status, detail, retry_after


class _ItemError(Exception):
    """One thread's failure inside a request: answered per item in a batch, as the status alone."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _static_page() -> str:
    return (resources.files("threadsum.serve") / "static" / "index.html").read_text(encoding="utf-8")


async def _until_disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was already read, so only http.disconnect comes)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _repairs_by_item(request: Request, n_items: int) -> dict[int, list[str]]:
    """The body repairs (``repaired_body``) per thread: ``threads[i].`` paths go to item i."""
    out: dict[int, list[str]] = {}
    for w in request.scope.get("state", {}).get("repairs", []):
        m = re.match(r"threads\[(\d+)\]\.(.*)", w, re.S)
        if m and int(m.group(1)) < n_items:
            out.setdefault(int(m.group(1)), []).append(m.group(2))
        elif n_items == 1 or not m:
            out.setdefault(0, []).append(w)
    return out


def _limit_schema(schema: dict, cfg: ServeConfig) -> dict:
    """The OpenAPI schema with this service's limits stated on the fields they bound."""
    comps = schema.get("components", {}).get("schemas", {})
    batch_limit = cfg.batch_limit
    thread = comps.get("ThreadIn", {}).get("properties", {})
    if "emails" in thread:
        thread["emails"]["maxItems"] = cfg.max_emails
    if "text" in thread:
        thread["text"]["maxLength"] = cfg.max_chars
    body = comps.get("EmailIn", {}).get("properties", {}).get("body")
    if body is not None:
        body["maxLength"] = cfg.max_chars
        body["description"] += f" A thread's bodies and subjects hold at most {cfg.max_chars} characters in all."
    batch = comps.get("BatchIn", {}).get("properties", {})
    if "threads" in batch:
        batch["threads"]["maxItems"] = batch_limit
    if "text" in batch:
        batch["text"]["maxLength"] = cfg.max_chars * batch_limit
    return schema


def _install_middleware(app: FastAPI, service: Service, too_large_advice: str = TOO_LARGE_ADVICE) -> None:
    """Body limit, API key, CORS, metrics and drain, and the request log, in that order from the inside out."""
    # add_middleware puts each new one outside the previous: the request log wraps everything
    # (it sees 401s and 413s too), the service middleware counts every answer (CORS preflights,
    # 401s and 413s included) and refuses work while draining before auth reads a header, CORS
    # wraps auth and the body limit so a browser can read them cross-origin, and the key is
    # checked before the body limit reads a byte of the body
    cfg = service.cfg
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes, advice=too_large_advice)
    if cfg.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=cfg.api_key)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Content-Type", "X-API-Key"],
            expose_headers=["Retry-After", "X-Request-Id"],
        )
    app.add_middleware(ServiceMiddleware, service=service)
    app.add_middleware(RequestLogMiddleware)


def _install_error_handlers(app: FastAPI) -> None:
    """422 for schema errors without echoing the body; our own errors with their status."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # the default handler echoes the offending input back; bodies can be 1 MB of private mail
        errors = [{"loc": list(e.get("loc", ())), "type": e.get("type", ""),
                   "msg": "holds no text (no letter or digit)" if e.get("type") == "string_pattern_mismatch"
                   else e.get("msg", "")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        loc = list(first["loc"])
        where = ".".join(str(p) for p in (loc[1:] if loc[:1] == ["body"] else loc)) or "body"
        return SafeJSONResponse({"detail": f"invalid request: {where}: {first['msg']}", "errors": errors}, status_code=422)

    @app.exception_handler(_HTTPError)
    async def _http_error(request: Request, exc: _HTTPError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


class _Pipeline:
    """One request's path: limits, input checks and cleaning (thread pool), the batcher, and the
    per-thread results with their status."""

    def __init__(self, service: Service):
        self.service = service
        self.summarizer, self.cfg, self.batcher = service.summarizer, service.cfg, service.batcher

    def check_limits(self, thread: Union[ThreadIn, "Thread"]) -> None:
        if isinstance(thread, ThreadIn):
            n_emails, n_chars = thread.size()
        else:
            n_emails, n_chars = len(thread.emails), sum(len(e.body) + len(e.subject) for e in thread.emails)
        if n_emails > self.cfg.max_emails:
            raise _ItemError(422, f"the thread has {n_emails} emails; the limit is serve.max_emails={self.cfg.max_emails}")
        if n_chars > self.cfg.max_chars:
            raise _ItemError(422, f"the thread has {n_chars} characters; the limit is serve.max_chars={self.cfg.max_chars}")

    def prepare_one(self, item: Union[ThreadIn, "Thread"], index: int) -> Union["PreparedInput", _ItemError]:
        try:
            self.check_limits(item)
            if isinstance(item, ThreadIn):
                item = item.to_input()
            return self.summarizer.prepare(item, index)
        except _ItemError as exc:
            return exc
        except InputError as exc:
            return _ItemError(422, str(exc))

    def prepare_all(self, items: list) -> list:
        return [self.prepare_one(t, i) for i, t in enumerate(items)]

    async def generate(self, request: Request, prepared: list) -> list:
        """Summaries (or exceptions) for the prepared items; withdraws them if the client leaves."""
        texts = [p.text for p in prepared if not isinstance(p, _ItemError)]
        submit = asyncio.ensure_future(self.batcher.submit(texts, return_exceptions=True))
        watch = asyncio.ensure_future(_until_disconnected(request))
        try:
            await asyncio.wait({submit, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not submit.done():
            submit.cancel()  # the batcher withdraws the queued threads
            raise _HTTPError(CLIENT_GONE, "the client disconnected; its threads were withdrawn")
        try:
            outputs = iter(submit.result())
        except QueueFullError as exc:
            raise _HTTPError(503, str(exc), retry_after=exc.retry_after) from None
        except BatcherStoppedError as exc:
            raise _HTTPError(503, str(exc), retry_after=1) from None
        return [p if isinstance(p, _ItemError) else next(outputs) for p in prepared]

    async def run(self, request: Request, items: list) -> tuple[list[BatchItemOut], float]:
        """Per-thread results (``BatchItemOut``) for ``items`` and the elapsed milliseconds."""
        t0 = time.perf_counter()
        if not self.service.ready:
            raise _HTTPError(503, "the model is loading or warming up; retry shortly", retry_after=1)
        # cleaning and rendering are CPU work of up to tens of ms per long thread: off the loop
        prepared = await run_in_threadpool(self.prepare_all, items)
        outputs = await self.generate(request, prepared)
        repairs = _repairs_by_item(request, len(items))
        results, checks = [], []
        for i, (p, out) in enumerate(zip(prepared, outputs)):
            if isinstance(out, _ItemError):
                results.append(BatchItemOut(index=i, status=out.status, error=out.detail))
                continue
            common = dict(index=i, thread_id=p.thread_id, subject=p.subject, warnings=repairs.get(i, []) + p.warnings)
            if isinstance(out, BaseException):
                results.append(BatchItemOut(**common, status=500, error=f"summarization failed "
                                            f"({type(out).__name__}); see the server log"))
            elif not out.strip():
                results.append(BatchItemOut(**common, status=500, error=str(EmptySummaryError([p.thread_id]))))
            else:
                results.append(BatchItemOut(**common, status=200, summary=out, n_emails=p.n_emails,
                                            truncated=p.truncated))
                checks.append((results[-1], p, out))
        # the grounding check is a few ms of CPU per summary: off the event loop, like cleaning
        claims = await run_in_threadpool(lambda: [grounding_of(p, out) for _, p, out in checks])
        for (item, _, _), (found, covered) in zip(checks, claims):
            item.claims = [ClaimOut(**c) for c in found]
            item.coverage = covered
        for r in results:
            self.service.metrics.observe_thread(r.status, [{"kind": c.kind, "supported": c.supported} for c in r.claims])
        return results, (time.perf_counter() - t0) * 1000


def service_app(service: Service, too_large_advice: str = TOO_LARGE_ADVICE, **fastapi_kwargs: Any) -> FastAPI:
    """A FastAPI app around ``service`` with what every route set shares: its lifespan (batcher and
    warm-up), the middleware (request log, metrics and drain, CORS, API key, body limit), the error
    handlers, ``/healthz``, ``/readyz`` and ``/metrics``. ``app.state.service`` is the service.
    ``too_large_advice`` is the fix a 413 answer names; ``fastapi_kwargs`` go to the FastAPI
    constructor (title, summary, ...)."""
    # Swagger UI / ReDoc assets come from the fastapi-offline package: /docs works with no network
    app = FastAPIOffline(version=_version(), lifespan=service.lifespan, default_response_class=SafeJSONResponse,
                         **{"title": "threadsum", **fastapi_kwargs})
    app.state.service = service
    app.state.batcher = service.batcher
    app.state.summarizer = service.summarizer
    _install_middleware(app, service, too_large_advice)
    _install_error_handlers(app)

    @app.get("/healthz", response_model=StatusOut, summary="Liveness: the process answers")
    async def healthz() -> StatusOut:
        return StatusOut(status="ok")

    @app.get("/readyz", response_model=StatusOut, summary="Readiness: model warmed up, the batch worker running, "
             "not draining", responses={503: {"model": ErrorOut}})
    async def readyz():
        if not service.accepting:
            raise _HTTPError(503, "draining" if service.draining else "not ready", retry_after=1)
        return StatusOut(status="ready")

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # rendering walks every series under the registry's lock: tiny, so on the loop
        body, content_type = service.metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return app


def create_app(summarizer: "Summarizer", serve_cfg: ServeConfig, routers: Sequence[APIRouter] = (),
               too_large_advice: str = TOO_LARGE_ADVICE) -> FastAPI:
    """The service's app (:func:`app_for`) around a loaded Summarizer and a new :class:`Service`."""
    return app_for(Service(summarizer, serve_cfg), routers, too_large_advice)


def app_for(service: Service, routers: Sequence[APIRouter] = (), too_large_advice: str = TOO_LARGE_ADVICE) -> FastAPI:
    """The HTTP service around ``service``: ``/v1/summarize``, ``/v1/summarize/batch``, ``/v1/status``
    and the page, on :func:`service_app`; the batcher starts with the app's lifespan.

    ``routers`` add routes that answer through the same pipeline (``app.state.pipeline``), batcher,
    metrics and drain, e.g. the SageMaker container contract of :mod:`threadsum.serve.sagemaker`;
    ``too_large_advice`` is the fix a 413 answer names.
    """
    cfg = service.cfg
    app = service_app(service, too_large_advice, summary="Summaries of email threads by a fine-tuned BART-family model.")
    pipeline = _Pipeline(service)
    app.state.pipeline = pipeline

    errors = {401: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut},
              500: {"model": ErrorOut}, 503: {"model": ErrorOut}}

    @app.post("/v1/summarize", response_model=SummaryOut, responses=errors, summary="Summarize one thread")
    async def summarize_one(thread: ThreadIn, request: Request) -> SummaryOut:
        results, elapsed = await pipeline.run(request, [thread])
        r = results[0]
        if r.status != 200:
            raise _HTTPError(r.status, r.error or "failed")
        return SummaryOut(thread_id=r.thread_id, subject=r.subject, summary=r.summary, n_emails=r.n_emails,
                          truncated=r.truncated, warnings=r.warnings, claims=r.claims, coverage=r.coverage,
                          elapsed_ms=round(elapsed, 1))

    @app.post("/v1/summarize/batch", response_model=BatchOut, responses=errors,
              summary="Summarize several threads, or every thread of an mbox (results in order, per thread)")
    async def summarize_batch(batch: BatchIn, request: Request) -> BatchOut:
        items: list = batch.threads
        limit = cfg.batch_limit
        if batch.text is not None and len(batch.text) > cfg.max_chars * limit:
            raise _HTTPError(422, f"text has {len(batch.text)} characters; the limit is serve.max_chars x the batch "
                                  f"limit = {cfg.max_chars * limit}")
        if batch.text is not None:
            try:
                items = await run_in_threadpool(threads_from_text, batch.text)
            except InputError as exc:
                raise _HTTPError(422, f"text: {exc}") from None
        if len(items) > limit:
            name = "serve.max_batch_threads" if cfg.max_batch_threads <= cfg.queue_size else "serve.queue_size"
            raise _HTTPError(422, f"batch has {len(items)} threads; the limit is {name}={limit}")
        results, elapsed = await pipeline.run(request, items)
        n_ok = sum(r.status == 200 for r in results)
        return BatchOut(results=results, n_ok=n_ok, n_failed=len(results) - n_ok, elapsed_ms=round(elapsed, 1))

    @app.get("/v1/status", summary="Model, device, versions, limits, batching and memory statistics",
             responses={401: {"model": ErrorOut}})
    async def status() -> dict[str, Any]:
        return service.status()

    page = _static_page()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _limit_schema(base_openapi(), cfg)
        return app.openapi_schema

    app.openapi = openapi
    for router in routers:
        app.include_router(router)
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("threadsum")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "0"


def serve(cfg: Config, model_dir: str, overrides: Sequence[str] = (), **app_options: Any) -> None:
    """`threadsum serve`: load the model once, then serve until SIGTERM/SIGINT and a drain (:func:`run_server`).

    ``overrides``: the command line's ``key=value`` settings; those outside ``serve.`` change how the
    model decodes (:func:`load_service`). ``app_options`` go to :func:`app_for` (``routers``,
    ``too_large_advice``: ``serve --sagemaker``).
    """
    s = cfg.serve
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if s.host not in ("127.0.0.1", "localhost", "::1") and s.api_key is None:
        log.warning("listening on %s without serve.api_key: anyone who can reach this port can use the model", s.host)
    service = load_service(model_dir, s, overrides)
    run_server(app_for(service, **app_options), service, s.host, s.port)


def run_server(app: FastAPI, service: Service, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn on ``host:port`` until a signal, then drain ``service`` (the module
    docstring says how) and return.

    Raises:
        DrainTimeoutError: accepted work was still unfinished ``serve.drain_timeout_s`` seconds after
            the signal (the CLI exits 1; the log names how much).
    """
    # uvicorn's access log would duplicate RequestLogMiddleware's line (which carries timing and size)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="info", lifespan="on",
                            timeout_graceful_shutdown=UVICORN_GRACE_S)
    server = DrainingServer(config, service, service.cfg.drain_timeout_s)
    server.run()
    if server.unfinished is not None:
        in_flight, pending = server.unfinished
        raise DrainTimeoutError(f"stopped with {in_flight} request(s) and {pending} thread(s) unfinished after "
                                f"serve.drain_timeout_s={service.cfg.drain_timeout_s:g} s; raise it (and the "
                                f"platform's grace period) or lower serve.queue_size")


UVICORN_GRACE_S = 5
"""Seconds uvicorn's own shutdown waits for open connections after the drain (only a drain that
timed out leaves any): the process is gone at most drain_timeout_s + this (+ a tick) after SIGTERM."""


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first SIGTERM/SIGINT drains the service instead of stopping at once.

    The signal handler only sets flags (a handler that logged or took a metrics lock could
    deadlock the thread it interrupted); ``on_tick``, which uvicorn's main loop runs every
    0.1 s, logs, watches the drain and sets ``should_exit`` when the service is idle or the
    deadline passed. The signal is not recorded for uvicorn to re-raise after shutdown, so a
    finished drain exits 0.
    """

    def __init__(self, config, service: Service, timeout_s: float):
        super().__init__(config)
        self.service = service
        self.timeout_s = timeout_s
        self.deadline: Optional[float] = None
        self.signal_name = ""
        self.unfinished: Optional[tuple[int, int]] = None
        self._announced = False

    def handle_exit(self, sig, frame) -> None:
        """Signal handler: the first signal starts the drain (flags only), a later one is uvicorn's own."""
        if self.deadline is None and not self.should_exit:
            self.deadline = time.monotonic() + self.timeout_s
            self.signal_name = getattr(signal.Signals(sig), "name", str(sig))
            self.service.draining = True  # from here on ServiceMiddleware refuses new work
            return
        super().handle_exit(sig, frame)  # a second signal: uvicorn's own shutdown

    async def on_tick(self, counter: int) -> bool:
        """Every 0.1 s: watch the drain (log, idle or deadline), then uvicorn's own tick; True to exit."""
        if self.deadline is not None and not self.should_exit:
            svc = self.service
            if not self._announced:
                self._announced = True
                svc.begin_drain()
                log.info("%s: draining: refusing new work (503), finishing %d request(s) and %d thread(s), "
                         "at most %g s", self.signal_name, svc.in_flight, svc.batcher.pending, self.timeout_s)
            if svc.idle:
                log.info("drained in %.1f s (%d request(s) refused meanwhile); exiting",
                         time.monotonic() - (self.deadline - self.timeout_s), svc.refused_while_draining)
                self.should_exit = True
            elif time.monotonic() >= self.deadline:
                self.unfinished = (svc.in_flight, svc.batcher.pending)
                log.error("drain timed out after %g s: %d request(s) and %d thread(s) unfinished",
                          self.timeout_s, *self.unfinished)
                self.should_exit = True
        return await super().on_tick(counter)


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, ready_timeout_s: float = 60.0) -> Iterator[str]:
    """Run the app with uvicorn in a background thread; yields its base URL once /readyz is 200.

    For notebooks, tests and benchmarks: the server is real (sockets, HTTP parsing, lifespan), only
    the process is shared. ``port=0`` picks a free port.
    """
    import threading
    import urllib.error
    import urllib.request

    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="threadsum-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout_s
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.02)
        bound = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://{host}:{bound}"
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as exc:
                if exc.code != 503:
                    raise
            except urllib.error.URLError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}/readyz did not become ready within {ready_timeout_s} s")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
