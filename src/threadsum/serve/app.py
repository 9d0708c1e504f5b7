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
limits and batching statistics are at ``/v1/status`` (behind the key when one is set).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
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
from threadsum.inference.summarizer import EmptySummaryError, claims_of, coverage_of
from threadsum.serve.batching import BatcherStoppedError, MicroBatcher, QueueFullError

if TYPE_CHECKING:  # pragma: no cover
    from threadsum.data.types import Thread
    from threadsum.inference.summarizer import PreparedInput, Summarizer

log = logging.getLogger("threadsum.serve")

PROTECTED_PREFIX = "/v1/"
"""Routes under this prefix need X-API-Key when serve.api_key is set; the rest is public."""

CLIENT_GONE = 499
"""Status logged for a request whose client disconnected before its answer (nginx's convention)."""


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

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

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
                                    f"{self.max_bytes}; send a shorter thread or raise the limit")


class APIKeyMiddleware:
    """401 for protected routes without the right X-API-Key, before any byte of the body is read."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIX) and scope["method"] != "OPTIONS":
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


# ------------------------------------------------------------------------------------ the app
class _ServiceState:
    def __init__(self) -> None:
        self.ready = False
        self.warmup_s: Optional[float] = None
        self.started = time.time()


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
    batch_limit = min(cfg.max_batch_threads, cfg.queue_size)
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


def _install_middleware(app: FastAPI, cfg: ServeConfig) -> None:
    """Body limit, API key, CORS and the request log, in that order from the inside out."""
    # add_middleware puts each new one outside the previous: the request log wraps everything
    # (it sees 401s and 413s too), CORS wraps auth and the body limit so a browser can read them
    # cross-origin, and the key is checked before the body limit reads a byte of the body
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
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

    def __init__(self, summarizer: "Summarizer", cfg: ServeConfig, batcher: MicroBatcher, state: _ServiceState):
        self.summarizer, self.cfg, self.batcher, self.state = summarizer, cfg, batcher, state

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
        if not self.state.ready:
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
        claims = await run_in_threadpool(lambda: [(claims_of(p, out), coverage_of(p, out)) for _, p, out in checks])
        for (item, _, _), (found, covered) in zip(checks, claims):
            item.claims = [ClaimOut(**c) for c in found]
            item.coverage = covered
        return results, (time.perf_counter() - t0) * 1000


def create_app(summarizer: "Summarizer", serve_cfg: ServeConfig) -> FastAPI:
    """The FastAPI app around a loaded Summarizer; the batcher starts with the app's lifespan."""
    cfg = serve_cfg
    state = _ServiceState()
    batcher = MicroBatcher(
        partial(summarizer.generate, batch_size=cfg.max_batch_size),
        max_batch_size=cfg.max_batch_size,
        max_wait_ms=cfg.max_wait_ms,
        queue_size=cfg.queue_size,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()

        async def warm() -> None:
            try:
                if cfg.warmup:
                    state.warmup_s = await batcher.run_in_worker(summarizer.warmup)
                state.ready = True
                log.info("model ready: %s", json.dumps(summarizer.info()))
            except Exception as exc:  # noqa: BLE001 - readiness stays false; the log says why
                log.error("warm-up generation failed: %s: %s", type(exc).__name__, exc)

        warm_task = asyncio.create_task(warm())
        try:
            yield
        finally:
            state.ready = False
            warm_task.cancel()
            await batcher.stop()

    # Swagger UI / ReDoc assets come from the fastapi-offline package: /docs works with no network
    app = FastAPIOffline(
        title="threadsum",
        version=_version(),
        summary="Summaries of email threads by a fine-tuned BART-family model.",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
    )
    app.state.batcher = batcher
    app.state.summarizer = summarizer
    app.state.service = state

    _install_middleware(app, cfg)
    _install_error_handlers(app)
    pipeline = _Pipeline(summarizer, cfg, batcher, state)

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
        limit = min(cfg.max_batch_threads, cfg.queue_size)
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

    @app.get("/healthz", response_model=StatusOut, summary="Liveness: the process answers")
    async def healthz() -> StatusOut:
        return StatusOut(status="ok")

    @app.get("/readyz", response_model=StatusOut, summary="Readiness: model warmed up and the batch worker running",
             responses={503: {"model": ErrorOut}})
    async def readyz():
        if not (state.ready and batcher.running):
            raise _HTTPError(503, "not ready", retry_after=1)
        return StatusOut(status="ready")

    @app.get("/v1/status", summary="Model, device, versions, limits and batching statistics",
             responses={401: {"model": ErrorOut}})
    async def status() -> dict[str, Any]:
        return {"status": "ready" if state.ready and batcher.running else "not ready",
                "uptime_s": round(time.time() - state.started, 1), "warmup_s": round(state.warmup_s or 0.0, 3),
                **summarizer.info(), "max_batch_size": cfg.max_batch_size, "auth": cfg.api_key is not None,
                "pending": batcher.pending, "batching": batcher.stats.to_dict(),
                "limits": {"max_body_bytes": cfg.max_body_bytes, "max_emails": cfg.max_emails,
                           "max_chars": cfg.max_chars, "max_batch_threads": cfg.max_batch_threads}}

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
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("threadsum")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "0"


def serve(cfg: Config, model_dir: str) -> None:
    """`threadsum serve`: load the model once, then run uvicorn until interrupted."""
    import uvicorn

    from threadsum.inference.summarizer import Summarizer, quiet_loading

    s = cfg.serve
    quiet_loading()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if s.host not in ("127.0.0.1", "localhost", "::1") and s.api_key is None:
        log.warning("listening on %s without serve.api_key: anyone who can reach this port can use the model", s.host)
    summarizer = Summarizer.from_pretrained(model_dir, device=s.device, dtype=s.dtype)
    app = create_app(summarizer, s)
    # uvicorn's access log would duplicate RequestLogMiddleware's line (which carries timing and size)
    uvicorn.run(app, host=s.host, port=s.port, access_log=False, log_level="info", timeout_graceful_shutdown=10)


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
