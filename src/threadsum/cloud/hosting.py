"""The SageMaker hosting contract: what an inference container is told, and the limits it answers by.

SageMaker starts an inference container as ``docker run <image> serve`` with the model archive
unpacked in ``/opt/ml/model`` and sends HTTP to port 8080 (or ``SAGEMAKER_BIND_TO_PORT``):
``GET /ping`` until it answers 200, then ``POST /invocations``; Batch Transform first asks
``GET /execution-parameters``. A Batch Transform job also sets ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` (the
job's MaxPayloadInMB). Source: the SageMaker developer guide, "Use your own inference code with
hosting services" and "... with batch transform".

This module reads that environment and owns the numbers both sides use: the container
(:mod:`threadsum.serve.sagemaker`) and the deploy commands (:mod:`threadsum.cloud.deploy`). It
imports neither an AWS SDK nor the web framework.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Mapping, Optional

from threadsum.cloud.container import ContainerError, sm_root
from threadsum.config import ServeConfig
from threadsum.errors import UserError
from threadsum.inference.engine import CT2_WEIGHTS
from threadsum.inference.export import ADAPTER_CONFIG, TOKENIZER_FILES

DEFAULT_PORT = 8080
"""Port SageMaker sends /ping and /invocations to, unless it sets ``SAGEMAKER_BIND_TO_PORT``."""

PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
MODEL_DIR_ENV = "SM_MODEL_DIR"
MAX_PAYLOAD_ENV = "SAGEMAKER_MAX_PAYLOAD_IN_MB"

OVERRIDES_ENV = "THREADSUM_OVERRIDES"
"""Container variable of extra ``section.key=value`` overrides (shell words), e.g. ``serve.max_batch_size=32``;
``threadsum sagemaker deploy --set`` puts them in the model's Environment (SageMaker passes no
arguments to ``serve``)."""

MB = 1024 * 1024
"""Bytes of SageMaker's "MB" as counted here: the larger reading of the unit, so a payload SageMaker
accepted is never refused by the container."""

MAX_PAYLOAD_MB = 6
"""SageMaker's payload limit of a real-time InvokeEndpoint request and Batch Transform's default
MaxPayloadInMB (6 MB)."""

MAX_TRANSFORM_PAYLOAD_MB = 100
"""Batch Transform's ceiling for MaxPayloadInMB."""

JSON = "application/json"
JSONLINES = "application/jsonlines"
JSONLINES_TYPES = (JSONLINES, "application/jsonl", "application/x-jsonlines", "application/x-ndjson")
"""Content types read as JSON Lines (one thread per line); SageMaker's own name is application/jsonlines."""

BATCH_STRATEGY = "MULTI_RECORD"
"""What /execution-parameters asks for: as many lines per request as fit in MaxPayloadInMB (the
container answers them in order, one per line). CreateTransformJob spells it ``MultiRecord``."""


def model_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the container finds the model: ``SM_MODEL_DIR`` when set, else ``<root>/model``
    (``/opt/ml/model``, or under ``THREADSUM_SM_ROOT`` in tests)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(MODEL_DIR_ENV) or sm_root(environ) / "model")


def bind_port(environ: Mapping[str, str] | None = None) -> int:
    """The port to listen on: ``SAGEMAKER_BIND_TO_PORT``, else 8080.

    Raises:
        ContainerError: the variable is not a port number (1-65535).
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(PORT_ENV) or str(DEFAULT_PORT)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ContainerError(f"{PORT_ENV}='{raw}' is not a port number (1-65535)")
    return int(raw)


def max_payload_mb(environ: Mapping[str, str] | None = None) -> int:
    """The largest request SageMaker sends, in MB: ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` (set by a Batch
    Transform job), else 6 (real-time endpoints and Batch Transform's default).

    Raises:
        ContainerError: the variable is not a whole number of MB from 1 to 100.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(MAX_PAYLOAD_ENV)
    if raw in (None, ""):
        return MAX_PAYLOAD_MB
    if not raw.isdigit() or not 0 < int(raw) <= MAX_TRANSFORM_PAYLOAD_MB:
        raise ContainerError(f"{MAX_PAYLOAD_ENV}='{raw}' is not a whole number of MB from 1 to {MAX_TRANSFORM_PAYLOAD_MB}")
    return int(raw)


def container_overrides(environ: Mapping[str, str] | None = None) -> list[str]:
    """Config overrides of ``threadsum serve --sagemaker``, before the user's own.

    ``serve.host=0.0.0.0`` (SageMaker connects from outside the container), ``serve.port`` from
    :func:`bind_port`, ``serve.max_body_bytes`` = :func:`max_payload_mb` MB, ``serve.api_key`` off
    (SageMaker authenticates callers with IAM and forwards no custom headers), then the words of
    ``THREADSUM_OVERRIDES``.

    Raises:
        ContainerError: a variable is malformed.
    """
    environ = os.environ if environ is None else environ
    try:
        extra = shlex.split(environ.get(OVERRIDES_ENV, ""))
    except ValueError as exc:
        raise ContainerError(f"{OVERRIDES_ENV} is not a list of section.key=value words: {exc}") from None
    return [
        "serve.host=0.0.0.0",
        f"serve.port={bind_port(environ)}",
        f"serve.max_body_bytes={max_payload_mb(environ) * MB}",
        "serve.api_key=null",
        *extra,
    ]


def max_concurrent_transforms(cfg: ServeConfig) -> int:
    """Concurrent /invocations a Batch Transform instance may send without a 503: the pending-thread
    queue (serve.queue_size) over the threads one request keeps in it (``ServeConfig.batch_limit``).
    With the defaults, 256 // 64 = 4."""
    return max(1, cfg.queue_size // cfg.batch_limit)


def execution_parameters(cfg: ServeConfig) -> dict[str, object]:
    """The answer to ``GET /execution-parameters``: MaxConcurrentTransforms, BatchStrategy, and
    MaxPayloadInMB (serve.max_body_bytes in whole MB, at least 1)."""
    return {
        "MaxConcurrentTransforms": max_concurrent_transforms(cfg),
        "BatchStrategy": BATCH_STRATEGY,
        "MaxPayloadInMB": max(1, cfg.max_body_bytes // MB),
    }


def jsonl_records(body: bytes) -> list[bytes]:
    """The records of a JSON Lines body as the container answers them: one per ``\\n``-separated
    line, empty lines included (each gets a 422 result), the newline that ends the last record
    not starting another. Batch Transform's line counts are reconciled by this rule."""
    lines = body.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    return lines


def media_type(content_type: Optional[str]) -> str:
    """The media type of a Content-Type header, lower case, without parameters ('' when absent)."""
    return (content_type or "").split(";")[0].strip().lower()


class ModelFolderError(UserError, ValueError):
    """A folder is not a model folder threadsum can serve; the message names what is missing and the fix."""


def validate_model_dir(path: str | Path, fix: str) -> Path:
    """Return ``path`` if it is a servable model folder: weights config (``config.json``, a LoRA
    ``adapter_config.json`` or CTranslate2's ``model.bin``) and a saved tokenizer beside them.

    Args:
        path: the folder.
        fix: where a model folder comes from, for the message.

    Raises:
        ModelFolderError: the folder does not exist or lacks the model or the tokenizer files.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"model folder '{path}' does not exist; {fix}")
    weights = ("config.json", ADAPTER_CONFIG, CT2_WEIGHTS)
    if not any((path / f).is_file() for f in weights):
        raise ModelFolderError(f"'{path}' holds none of {', '.join(weights)}: it is not a saved model; {fix}")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelFolderError(f"'{path}' holds no tokenizer ({', '.join(TOKENIZER_FILES)}); {fix}")
    return path
