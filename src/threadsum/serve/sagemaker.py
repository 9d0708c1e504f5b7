"""`threadsum serve --sagemaker`: the SageMaker inference container contract on the threadsum service.

The routes below are added to the app of :func:`threadsum.serve.app.create_app` and answer through
its pipeline (``app.state.pipeline``): the same input checks, limits, batcher, per-thread statuses
and claims as ``/v1/summarize``. What SageMaker sees:

- ``GET /ping``: 200 once the model is loaded and warmed up, 503 before (SageMaker waits for 200).
- ``POST /invocations``:

  - ``application/json``: one thread (any shape ``/v1/summarize`` takes) -> the ``/v1/summarize``
    answer (a refused thread gets its 4xx/5xx with ``detail``); ``{"threads": [...]}`` -> the
    ``/v1/summarize/batch`` answer (``results`` in order, ``n_ok``, ``n_failed``).
  - ``application/jsonlines``: one thread per line in, one result per line out, in order (the
    ``/v1/summarize/batch`` item: ``index``, ``status``, ``summary`` or ``error``...). A line that is
    not a JSON thread gets a 422 item in its place; the other lines are answered as usual.

  Threads go to the batcher ``ServeConfig.batch_limit`` at a time, so a 6 MB Batch Transform
  request of thousands of short threads never overfills the queue. Any other Content-Type: 415. A
  body over the payload limit (6 MB, or Batch Transform's ``SAGEMAKER_MAX_PAYLOAD_IN_MB``): 413
  naming SageMaker's limit and the alternatives.
- ``GET /execution-parameters``: what Batch Transform should send
  (:func:`threadsum.cloud.hosting.execution_parameters`).

Two images run it (the archive of ``threadsum sagemaker package`` serves both):

- an image whose ``serve`` entry point runs ``threadsum serve --sagemaker`` (``deploy --image``):
  uvicorn on ``0.0.0.0:$SAGEMAKER_BIND_TO_PORT`` (8080), :func:`serve_sagemaker`;
- the maintained AWS PyTorch inference image (the default): its toolkit installs
  ``code/requirements.txt``, starts TorchServe on 8080 and calls ``model_fn`` / ``transform_fn`` of
  ``code/inference.py``, which are :func:`model_fn` and :func:`transform_fn` here. ``model_fn`` runs
  this same app in-process on 127.0.0.1 and ``transform_fn`` forwards each request to its
  ``/invocations``, so both images answer alike (one code path, not two).
"""
from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from threadsum.cloud import hosting
from threadsum.config import Config, load_config
from threadsum.serve.app import (
    BatchIn,
    BatchItemOut,
    BatchOut,
    SafeJSONResponse,
    SummaryOut,
    ThreadIn,
    body_problem,
    create_app,
    repaired_body,
    serve,
    serve_in_thread,
)

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

log = logging.getLogger("threadsum.serve")

MODEL_FOLDER_FIX = ("SageMaker unpacks the model archive there; build it with `threadsum sagemaker package "
                    "MODEL_DIR` (or pass --model)")


def too_large_advice(cfg: Config) -> str:
    """The fix a 413 names in the container: SageMaker's limit and the ways to send more."""
    mb = cfg.serve.max_body_bytes / hosting.MB
    return (f"SageMaker sends at most {mb:g} MB per request: split the threads over several requests, or use "
            "Batch Transform (`threadsum sagemaker transform`) or an asynchronous endpoint "
            "(`threadsum sagemaker deploy --async`)")


# ------------------------------------------------------------------------------------ routes
def _error(status: int, detail: str) -> SafeJSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return SafeJSONResponse({"detail": detail}, status_code=status, headers=headers)


def _first_error(exc: ValidationError) -> str:
    """'invalid request: emails.0.body: ...' for the first failing field (input values never echoed)."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    where = ".".join(str(p) for p in errors[0].get("loc", ())) or "body"
    return f"invalid request: {where}: {errors[0].get('msg', '')}"


async def _answer(request: Request, items: list, repairs: list[list[str]]) -> list[BatchItemOut]:
    """Per-thread results of ``items`` in order, ``ServeConfig.batch_limit`` threads at a time;
    ``repairs[i]`` (body repairs of item i) lead its warnings."""
    pipeline = request.app.state.pipeline
    step = pipeline.cfg.batch_limit
    out: list[BatchItemOut] = []
    for start in range(0, len(items), step):
        answered, _ = await pipeline.run(request, items[start:start + step])
        for item in answered:
            item.index += start
            item.warnings = repairs[item.index] + item.warnings
        out.extend(answered)
    return out


async def _answer_json(request: Request, body: bytes) -> Response:
    """One thread -> the /v1/summarize answer; {"threads": [...]} -> the /v1/summarize/batch answer."""
    t0 = time.perf_counter()
    problem = body_problem(body)
    if problem is not None:
        return _error(422, problem[1])
    body, repairs = repaired_body(body)
    data = json.loads(body)
    try:
        # {"text": ...} is one thread (as on /v1/summarize); only "threads" makes a batch
        batch = BatchIn.model_validate(data) if isinstance(data, dict) and "threads" in data else None
        thread = None if batch is not None else ThreadIn.model_validate(data)
    except ValidationError as exc:
        return _error(422, _first_error(exc))
    if batch is None:
        result = (await _answer(request, [thread], [repairs]))[0]
        if result.status != 200:
            return _error(result.status, result.error or "failed")
        fields = {k: v for k, v in result.model_dump().items() if k in SummaryOut.model_fields}
        ms = round((time.perf_counter() - t0) * 1000, 1)
        return SafeJSONResponse(SummaryOut(**fields, elapsed_ms=ms).model_dump())
    items: list = batch.threads
    per_item = [[] for _ in items]
    for w in repairs:  # 'threads[i].emails[0].body: ...' goes to item i
        head, _, rest = w.partition("].")
        if head.startswith("threads[") and head[8:].isdigit() and int(head[8:]) < len(items):
            per_item[int(head[8:])].append(rest)
    results = await _answer(request, items, per_item)
    n_ok = sum(r.status == 200 for r in results)
    ms = round((time.perf_counter() - t0) * 1000, 1)
    return SafeJSONResponse(BatchOut(results=results, n_ok=n_ok, n_failed=len(results) - n_ok,
                                     elapsed_ms=ms).model_dump())


def _parse_line(raw: bytes, number: int) -> tuple[Optional[ThreadIn], list[str], Optional[str]]:
    """(thread, repair warnings, None) for a good line, (None, [], why) for a bad one (1-based ``number``)."""
    if not raw.strip():
        return None, [], f"line {number} is empty; send one JSON thread per line"
    problem = body_problem(raw)
    if problem is not None:
        return None, [], f"line {number}: {problem[1]}"
    raw, repairs = repaired_body(raw)
    try:
        return ThreadIn.model_validate(json.loads(raw)), repairs, None
    except ValidationError as exc:
        return None, [], f"line {number}: {_first_error(exc)}"


async def _answer_jsonlines(request: Request, body: bytes) -> Response:
    """One result line per input line, in order; a bad line gets a 422 item in its place."""
    lines = hosting.jsonl_records(body)
    results: list[Optional[BatchItemOut]] = [None] * len(lines)
    good: list[tuple[int, ThreadIn, list[str]]] = []
    for i, raw in enumerate(lines):
        thread, repairs, why = _parse_line(raw.rstrip(b"\r"), i + 1)
        if thread is None:
            results[i] = BatchItemOut(index=i, status=422, error=why)
        else:
            good.append((i, thread, repairs))
    answered = await _answer(request, [t for _, t, _ in good], [r for _, _, r in good])
    for (i, _, _), item in zip(good, answered):
        item.index = i
        results[i] = item
    # no newline after the last line: Batch Transform (AssembleWith=Line) adds one between requests
    out = "\n".join(json.dumps(r.model_dump(), ensure_ascii=False) for r in results if r is not None)
    return Response(out.encode("utf-8", "replace"), media_type=hosting.JSONLINES)


def build_router() -> APIRouter:
    """The SageMaker routes: ``GET /ping``, ``POST /invocations``, ``GET /execution-parameters``."""
    router = APIRouter(tags=["SageMaker"])

    @router.get("/ping", summary="SageMaker health check: 200 once the model is ready")
    async def ping(request: Request):
        state = request.app.state
        if not (state.service.ready and state.batcher.running):
            return _error(503, "the model is loading or warming up")
        return SafeJSONResponse({"status": "ready"})

    @router.post("/invocations", summary="SageMaker inference: application/json or application/jsonlines")
    async def invocations(request: Request):
        ctype = hosting.media_type(request.headers.get("content-type"))
        body = await request.body()
        if not body.strip():
            return _error(422, "the body is empty; send a JSON thread, or JSON lines with one thread each")
        if ctype in hosting.JSONLINES_TYPES:
            return await _answer_jsonlines(request, body)
        if ctype in ("", hosting.JSON, "*/*"):
            return await _answer_json(request, body)
        return _error(415, f"Content-Type '{ctype}' is not supported; send {hosting.JSON} (one thread, or "
                           f'{{"threads": [...]}}) or {hosting.JSONLINES} (one thread per line)')

    @router.get("/execution-parameters", summary="What SageMaker Batch Transform should send")
    async def execution_parameters(request: Request):
        return SafeJSONResponse(hosting.execution_parameters(request.app.state.pipeline.cfg))

    return router


# ------------------------------------------------------------------------------------ running
def container_config(config_path: Optional[str | Path] = None, overrides: Optional[list[str]] = None,
                     environ: Optional[Mapping[str, str]] = None) -> Config:
    """The config in the container: the file (defaults when None), then
    :func:`threadsum.cloud.hosting.container_overrides` (host 0.0.0.0, port, payload limit,
    ``THREADSUM_OVERRIDES``), then ``overrides`` (e.g. ``serve.host=127.0.0.1`` in tests).

    Raises:
        ContainerError: a SageMaker variable is malformed.
        ConfigError: the config or an override does not validate.
    """
    return load_config(config_path, [*hosting.container_overrides(environ), *(overrides or [])])


def resolve_model_dir(model: Optional[str | Path] = None, environ: Optional[Mapping[str, str]] = None) -> Path:
    """``model`` when given, else ``SM_MODEL_DIR`` or ``/opt/ml/model``; checked to be a model folder.

    Raises:
        ModelFolderError: the folder is missing or holds no model or tokenizer.
    """
    return hosting.validate_model_dir(Path(model) if model else hosting.model_dir(environ), MODEL_FOLDER_FIX)


def serve_sagemaker(config_path: Optional[str | Path] = None, overrides: Optional[list[str]] = None,
                    model: Optional[str | Path] = None, environ: Optional[Mapping[str, str]] = None) -> None:
    """`threadsum serve --sagemaker`: the service plus the SageMaker routes, until stopped.

    Raises:
        ModelFolderError, ContainerError, ConfigError: see :func:`resolve_model_dir` and
            :func:`container_config`.
    """
    model_dir = resolve_model_dir(model, environ)
    cfg = container_config(config_path, overrides, environ)
    log.info("SageMaker container: model %s, port %d, payload limit %d bytes", model_dir, cfg.serve.port,
             cfg.serve.max_body_bytes)
    serve(cfg, str(model_dir), overrides or [], routers=[build_router()], too_large_advice=too_large_advice(cfg))


def create_container_app(model_dir: str | Path, cfg: Config) -> "FastAPI":
    """The service app with the SageMaker routes around the model of ``model_dir`` (loaded here)."""
    from threadsum.inference.summarizer import Summarizer, quiet_loading

    quiet_loading()
    summarizer = Summarizer.from_pretrained(str(model_dir), device=cfg.serve.device, dtype=cfg.serve.dtype)
    return create_app(summarizer, cfg.serve, routers=[build_router()], too_large_advice=too_large_advice(cfg))


# ------------------------------------------------------------------------------------ the toolkit
class InvocationError(Exception):
    """A non-200 answer of /invocations inside the PyTorch inference toolkit (outside it: this class)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code, message)
        self.status_code, self.message = status_code, message


class ToolkitBridge:
    """The container app run in-process on 127.0.0.1 for the PyTorch inference toolkit (TorchServe
    owns port 8080 there); :meth:`invoke` forwards one request to its ``/invocations``.

    Started by :func:`model_fn` once per TorchServe worker (the deploy commands ask for one worker:
    ``SAGEMAKER_MODEL_SERVER_WORKERS=1``, one model copy per instance). The server thread lives as
    long as the worker process.
    """

    def __init__(self, model_dir: str | Path, environ: Optional[Mapping[str, str]] = None,
                 ready_timeout_s: float = 600.0):
        environ = os.environ if environ is None else environ
        model_dir = resolve_model_dir(model_dir, environ)
        # 127.0.0.1: only TorchServe's worker in this container talks to it
        cfg = container_config(None, ["serve.host=127.0.0.1"], environ)
        self._server = serve_in_thread(create_container_app(model_dir, cfg), ready_timeout_s=ready_timeout_s)
        self.url = self._server.__enter__()  # kept open for the life of the worker

    def invoke(self, body: Union[bytes, str], content_type: Optional[str]) -> tuple[int, bytes, str]:
        """(status, body, content type) of ``POST /invocations`` with this body and Content-Type."""
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        req = urllib.request.Request(self.url + "/invocations", data=data, method="POST",
                                     headers={"Content-Type": content_type or hosting.JSON})
        try:
            # the toolkit's own response timeout (SAGEMAKER_MODEL_SERVER_TIMEOUT) bounds the wait
            with urllib.request.urlopen(req, timeout=3600) as r:
                return r.status, r.read(), r.headers.get("Content-Type", hosting.JSON)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", hosting.JSON)

    def close(self) -> None:
        """Stop the in-process server (the toolkit never does; tests do)."""
        self._server.__exit__(None, None, None)


def model_fn(model_dir: str) -> ToolkitBridge:
    """The toolkit's model loader: the threadsum app around ``model_dir``, served in-process."""
    return ToolkitBridge(model_dir)


def transform_fn(model: ToolkitBridge, input_data: Union[bytes, str], content_type: str,
                 accept: Optional[str] = None) -> tuple[bytes, str]:
    """The toolkit's request handler: (answer body, its content type) of /invocations.

    ``accept`` is not used: the answer has the request's type (JSON in, JSON out; JSON lines in,
    JSON lines out).

    Raises:
        GenericInferenceToolkitError (inside the toolkit) or :class:`InvocationError`: /invocations
            answered a status other than 200; the toolkit sends that status and the detail.
    """
    status, body, ctype = model.invoke(input_data, content_type)
    if status == 200:
        return body, ctype
    try:
        detail = json.loads(body).get("detail", "")
    except (ValueError, AttributeError):
        detail = body.decode("utf-8", "replace")
    try:
        from sagemaker_inference.errors import GenericInferenceToolkitError  # only in the AWS image
    except ImportError:
        raise InvocationError(status, detail) from None
    raise GenericInferenceToolkitError(status, detail, detail)
