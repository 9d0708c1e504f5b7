"""The HTTP service: FastAPI app factory and the `threadsum serve` entry point.

No model logic lives here: requests are validated and turned into model input by
``Summarizer.prepare`` (the training clean/render path), and generation goes through the
``MicroBatcher``. Status codes a client can act on:

- 200 summary; 401 missing/wrong X-API-Key (only when serve.api_key is set)
- 413 body larger than serve.max_body_bytes
- 422 malformed thread, or over serve.max_emails / serve.max_chars / serve.max_batch_threads
- 503 + Retry-After: more than serve.queue_size threads pending, or the model is warming up
- 500 generation failed (logged; the request body never is)
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from threadsum.config import Config, ServeConfig
from threadsum.inference.summarizer import InputError
from threadsum.serve.batching import BatcherStoppedError, MicroBatcher, QueueFullError

if TYPE_CHECKING:  # pragma: no cover
    from threadsum.inference.summarizer import Summarizer

log = logging.getLogger("threadsum.serve")


# ------------------------------------------------------------------------------------ schemas
class EmailIn(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    sender: str = Field("", alias="from", description="Author: display name and/or address.")
    to: Union[list[str], str] = Field(default_factory=list, description="Recipients (list, or comma-separated).")
    cc: Union[list[str], str] = Field(default_factory=list, description="Cc recipients.")
    date: Union[str, float, None] = Field(None, description="ISO 8601, RFC 2822 or epoch seconds.")
    subject: str = ""
    body: str = Field(..., description="Plain-text body.")


class ThreadIn(BaseModel):
    """One thread: either structured ``emails`` or ``text`` (a pasted thread or a raw .eml)."""

    model_config = ConfigDict(extra="ignore")

    thread_id: Union[str, int, None] = None
    subject: str = ""
    emails: Optional[list[EmailIn]] = Field(None, description="The thread's emails, in any order.")
    text: Optional[str] = Field(None, description="Plain text of a thread, or an RFC 822 message (.eml content).")

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

    def to_input(self) -> Union[str, dict]:
        if self.text is not None:
            return self.text
        d = self.model_dump(by_alias=True, exclude={"text"})
        return d


class BatchIn(BaseModel):
    threads: list[ThreadIn]


class SummaryOut(BaseModel):
    thread_id: str
    subject: str
    summary: str
    n_emails: int = Field(description="Emails after cleaning (exact duplicates dropped).")
    truncated: bool = Field(description="True when the thread was cut to fit the model's input window.")
    elapsed_ms: float = Field(description="Server time for this request, queueing included.")


class BatchOut(BaseModel):
    results: list[SummaryOut]
    elapsed_ms: float


class ErrorOut(BaseModel):
    detail: str


# --------------------------------------------------------------------------------- middleware
class BodyLimitMiddleware:
    """413 for bodies over the limit, checked before any parsing (chunked bodies included).

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
        scope.setdefault("state", {})["body_bytes"] = len(body)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, send, size: int):
        detail = (f"request body of {size} bytes or more exceeds serve.max_body_bytes={self.max_bytes}; "
                  f"send a shorter thread or raise the limit")
        response = JSONResponse({"detail": detail}, status_code=413)
        await response(scope, None, send)


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


def _error(status: int, detail: str, retry_after: Optional[int] = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, retry_after: Optional[int] = None):
        self.status, self.detail, self.retry_after = status, detail, retry_after


def _static_page() -> str:
    return (resources.files("threadsum.serve") / "static" / "index.html").read_text(encoding="utf-8")


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
            except Exception as exc:  # noqa: BLE001 - readiness stays false; /readyz says why
                log.error("warm-up generation failed: %s: %s", type(exc).__name__, exc)

        warm_task = asyncio.create_task(warm())
        try:
            yield
        finally:
            state.ready = False
            warm_task.cancel()
            await batcher.stop()

    app = FastAPI(
        title="threadsum",
        version=_version(),
        summary="Summaries of email threads by a fine-tuned BART-family model.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.summarizer = summarizer
    app.state.service = state

    # add_middleware puts each new one outside the previous: the request log wraps everything
    # (it sees 413s too) and CORS wraps the body limit so a browser can read a 413 cross-origin
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # the default handler echoes the offending input back; bodies can be 1 MB of private mail
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        loc = list(first["loc"])
        where = ".".join(str(p) for p in (loc[1:] if loc[:1] == ["body"] else loc)) or "body"
        return JSONResponse({"detail": f"invalid request: {where}: {first['msg']}", "errors": errors}, status_code=422)

    @app.exception_handler(_HTTPError)
    async def _http_error(request: Request, exc: _HTTPError):
        return _error(exc.status, exc.detail, exc.retry_after)

    async def require_key(x_api_key: Optional[str] = Header(None, description="Required when serve.api_key is set.")):
        if cfg.api_key is None:
            return
        if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), cfg.api_key.encode()):
            raise _HTTPError(401, "missing or wrong X-API-Key header (this service has serve.api_key set)")

    def check_limits(thread: ThreadIn, where: str = "thread") -> None:
        n_emails, n_chars = thread.size()
        if n_emails > cfg.max_emails:
            raise _HTTPError(422, f"{where} has {n_emails} emails; the limit is serve.max_emails={cfg.max_emails}")
        if n_chars > cfg.max_chars:
            raise _HTTPError(422, f"{where} has {n_chars} characters; the limit is serve.max_chars={cfg.max_chars}")

    def prepare_all(threads: list[ThreadIn]):
        out = []
        for i, t in enumerate(threads):
            try:
                out.append(summarizer.prepare(t.to_input(), i))
            except InputError as exc:
                where = f"threads[{i}]: " if len(threads) > 1 else ""
                raise _HTTPError(422, f"{where}{exc}") from None
        return out

    async def run(threads: list[ThreadIn]) -> tuple[list[SummaryOut], float]:
        t0 = time.perf_counter()
        if not state.ready:
            raise _HTTPError(503, "the model is loading or warming up; retry shortly", retry_after=1)
        # cleaning and rendering are CPU work of up to tens of ms per long thread: off the loop
        prepared = await run_in_threadpool(prepare_all, threads)
        try:
            summaries = await batcher.submit([p.text for p in prepared])
        except QueueFullError as exc:
            raise _HTTPError(503, str(exc), retry_after=exc.retry_after) from None
        except BatcherStoppedError as exc:
            raise _HTTPError(503, str(exc), retry_after=1) from None
        except Exception as exc:  # noqa: BLE001 - logged by the batcher, without the input
            raise _HTTPError(500, f"summarization failed ({type(exc).__name__}); see the server log") from None
        elapsed = (time.perf_counter() - t0) * 1000
        results = [
            SummaryOut(thread_id=p.thread_id, subject=p.subject, summary=s, n_emails=p.n_emails,
                       truncated=p.truncated, elapsed_ms=round(elapsed, 1))
            for p, s in zip(prepared, summaries)
        ]
        return results, elapsed

    errors = {401: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}}

    @app.post("/v1/summarize", response_model=SummaryOut, responses=errors, dependencies=[Depends(require_key)],
              summary="Summarize one thread")
    async def summarize_one(thread: ThreadIn) -> SummaryOut:
        check_limits(thread)
        results, _ = await run([thread])
        return results[0]

    @app.post("/v1/summarize/batch", response_model=BatchOut, responses=errors, dependencies=[Depends(require_key)],
              summary="Summarize several threads (results in request order)")
    async def summarize_batch(batch: BatchIn) -> BatchOut:
        n = len(batch.threads)
        if n == 0:
            raise _HTTPError(422, "'threads' is empty; send at least one thread")
        limit = min(cfg.max_batch_threads, cfg.queue_size)
        if n > limit:
            name = "serve.max_batch_threads" if cfg.max_batch_threads <= cfg.queue_size else "serve.queue_size"
            raise _HTTPError(422, f"batch has {n} threads; the limit is {name}={limit}")
        for i, t in enumerate(batch.threads):
            check_limits(t, f"threads[{i}]")
        results, elapsed = await run(batch.threads)
        return BatchOut(results=results, elapsed_ms=round(elapsed, 1))

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - state.started, 1),
                "pending": batcher.pending, "batching": batcher.stats.to_dict()}

    @app.get("/readyz", summary="Readiness: model loaded, warmed up and the batch worker running",
             responses={503: {"model": ErrorOut}})
    async def readyz():
        if not (state.ready and batcher.running):
            return _error(503, "not ready: the model is loading or warming up", retry_after=1)
        return {"status": "ready", "warmup_s": round(state.warmup_s or 0.0, 3), **summarizer.info(),
                "max_batch_size": cfg.max_batch_size, "auth": cfg.api_key is not None,
                "limits": {"max_body_bytes": cfg.max_body_bytes, "max_emails": cfg.max_emails,
                           "max_chars": cfg.max_chars, "max_batch_threads": cfg.max_batch_threads}}

    page = _static_page()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

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
