"""SageMaker inference with boto3: package a model folder, deploy it (real-time, serverless or
asynchronous), invoke, undeploy, and run Batch Transform over JSON Lines in S3.

Resource names. ``deploy --name N`` creates, per deploy, a model and an endpoint config named
``N-YYYYmmdd-HHMMSS`` (:func:`~threadsum.cloud.sagemaker.stamped_name`: SageMaker's 63-character
rule, ``N`` cut to fit) and points the endpoint ``N`` at them: CreateEndpoint the first time,
UpdateEndpoint after that (blue/green, no request dropped). All three are tagged
``threadsum:endpoint=N``; the clean-up after an update and ``undeploy N`` delete only what carries
that tag (and ``undeploy`` the endpoint's current config and models). What goes where
(``P`` = ``--s3-prefix``)::

    P/N/N-YYYYmmdd-HHMMSS/model.tar.gz    the archive of :func:`package` (unpacked in /opt/ml/model)

Image choice (:func:`inference_image_uri`): the maintained AWS PyTorch inference image by default
(TorchServe + the SageMaker inference toolkit; the toolkit installs ``code/requirements.txt`` and
calls ``code/inference.py``, which runs ``threadsum serve --sagemaker``'s app in-process), or the
user's own image (``--image``) whose ``serve`` entry point runs ``threadsum serve --sagemaker``.
Validation and AWS helpers (role, region, instance type, names, S3 URIs, boto3 clients, error
messages) are those of :mod:`threadsum.cloud.sagemaker`.
"""
from __future__ import annotations

import io
import shlex
import sys
import tarfile
import tempfile
import time
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Optional, TextIO

from threadsum.cloud import hosting
from threadsum.cloud import sagemaker as sm
from threadsum.config import ServeConfig
from threadsum.errors import MissingExtraError

VARIANT = "AllTraffic"
TAG_ENDPOINT = "threadsum:endpoint"
"""Tag key on the models, endpoint configs and endpoints made by ``deploy``; the value is the endpoint name."""
TAG_TRANSFORM = "threadsum:transform"
"""Tag key on a model ``transform`` makes from a model folder or archive; the value is the job name."""
LONG_REQUEST_S = 3600
"""Seconds one Batch Transform request may take (ModelClientConfig.InvocationsTimeoutInSeconds'
ceiling): a MultiRecord request holds up to MaxPayloadInMB of threads."""
ARCHIVE_NAME = "model.tar.gz"
CODE_DIR = "code"
INFERENCE_SCRIPT = "inference.py"
SERVE_SCRIPT = "serve"
MODEL_FOLDER_FIX = "pass the folder `threadsum train` wrote (or `threadsum export --out`)"
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
"""Memory sizes a serverless endpoint accepts (SageMaker's ServerlessConfig.MemorySizeInMB)."""

_INFERENCE_SOURCE = '''"""SageMaker PyTorch inference toolkit entry: see threadsum/serve/sagemaker.py."""
from threadsum.serve.sagemaker import model_fn, transform_fn  # noqa: F401
'''

_SERVE_SOURCE = '''#!/bin/sh
# `serve` entry point for an image of your own: SageMaker runs `docker run <image> serve`.
# The threadsum package travels in this folder; its dependencies are in requirements.txt.
here="$(dirname "$0")"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec python -m threadsum serve --sagemaker "$@"
'''


# ------------------------------------------------------------------------------ package
def package(model_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``model.tar.gz`` for SageMaker hosting: the model folder's files at the top (weights,
    tokenizer, config), ``code/inference.py`` (toolkit entry), ``code/serve`` (entry point for an
    image of your own), ``code/requirements.txt`` (threadsum's core + serve dependencies, no torch)
    and the threadsum package under ``code/threadsum/``.

    Returns {"archive", "files", "bytes"}. Names are sorted, mtimes and owners zeroed.

    Raises:
        ModelFolderError: ``model_dir`` is not a servable model folder (exit 2).
    """
    src = hosting.validate_model_dir(model_dir, MODEL_FOLDER_FIX)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    members: list[tuple[str, Path | bytes, int]] = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and not rel.startswith(f"{CODE_DIR}/"):
            members.append((rel, p, 0o644))
    members += [
        (f"{CODE_DIR}/{INFERENCE_SCRIPT}", _INFERENCE_SOURCE.encode(), 0o644),
        (f"{CODE_DIR}/{SERVE_SCRIPT}", _SERVE_SOURCE.encode(), 0o755),
        (f"{CODE_DIR}/requirements.txt", sm.requirements_txt("serve").encode(), 0o644),
    ]
    pkg = sm._package_dir()
    for p in sorted(pkg.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"):
            members.append((str(PurePosixPath(CODE_DIR, "threadsum", *p.relative_to(pkg).parts)), p, 0o644))
    total = 0
    with tarfile.open(out, "w:gz") as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 0
            if isinstance(data, Path):
                info.size = data.stat().st_size
                with data.open("rb") as fh:  # streamed: weights can be gigabytes
                    tar.addfile(info, fh)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            total += info.size
    return {"archive": str(out), "files": len(members), "bytes": total}


# ------------------------------------------------------------------------------ requests
def inference_image_uri(region: str, instance_type: Optional[str]) -> str:
    """The AWS PyTorch inference image for the region: the GPU build on GPU instance types
    (``gpus_per_instance`` table), else (CPU instances, serverless) the CPU build."""
    data = sm.images()
    inf = data["inference"]
    kind = "gpu" if instance_type and sm.gpus_per_instance(instance_type) else "cpu"
    account = data["registries"].get(region, data["default_account"])
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/{inf['repository']}:{inf['tags'][kind]}"


def model_request(name: str, image: str, model_data: str, role: str, region: str,
                  overrides: Optional[list[str]] = None, *, tags: Optional[list[dict[str, str]]] = None,
                  long_requests: bool = False) -> dict[str, Any]:
    """The CreateModel request. Environment: the toolkit's entry script and one model server
    worker (one copy of the model per instance; the threadsum batcher does the concurrency),
    ``THREADSUM_OVERRIDES`` when ``overrides`` are given, and with ``long_requests`` (Batch
    Transform) the model server's request timeout raised to :data:`LONG_REQUEST_S`."""
    env = {
        "SAGEMAKER_PROGRAM": INFERENCE_SCRIPT,
        "SAGEMAKER_SUBMIT_DIRECTORY": f"/opt/ml/model/{CODE_DIR}",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": region,
        "TOKENIZERS_PARALLELISM": "false",
    }
    if long_requests:
        env["SAGEMAKER_MODEL_SERVER_TIMEOUT"] = str(LONG_REQUEST_S)
    if overrides:
        env[hosting.OVERRIDES_ENV] = " ".join(shlex.quote(o) for o in overrides)
    return {"ModelName": name, "ExecutionRoleArn": role,
            "PrimaryContainer": {"Image": image, "ModelDataUrl": model_data, "Environment": env},
            "Tags": list(tags or [])}


def endpoint_config_request(name: str, *, model_name: Optional[str] = None, instance_type: Optional[str],
                            instance_count: int = 1, serverless: Optional[tuple[int, int]] = None,
                            async_output: Optional[str] = None,
                            tags: Optional[list[dict[str, str]]] = None) -> dict[str, Any]:
    """The CreateEndpointConfig request ``name`` serving ``model_name`` (default ``name``): an
    instance variant, or ``serverless`` = (MemorySizeInMB, MaxConcurrency); ``async_output``
    (s3://...) adds AsyncInferenceConfig."""
    variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model_name or name}
    if serverless is not None:
        variant["ServerlessConfig"] = {"MemorySizeInMB": serverless[0], "MaxConcurrency": serverless[1]}
    else:
        variant.update(InstanceType=instance_type, InitialInstanceCount=instance_count)
    req: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": [variant], "Tags": list(tags or [])}
    if async_output is not None:
        req["AsyncInferenceConfig"] = {"OutputConfig": {"S3OutputPath": async_output}}
    return req


def endpoint_tags(endpoint: str) -> list[dict[str, str]]:
    """Tags of every model, endpoint config and endpoint ``deploy`` creates for ``endpoint``: what
    ``undeploy`` and the clean-up after a redeploy look for (nothing untagged is ever deleted)."""
    return [{"Key": TAG_ENDPOINT, "Value": endpoint}]


def _validate_serverless(memory_mb: int, max_concurrency: int) -> tuple[int, int]:
    if memory_mb not in SERVERLESS_MEMORY_MB:
        raise sm.LaunchValidationError(f"--memory-mb {memory_mb} is not a serverless memory size; use one of "
                                       f"{', '.join(map(str, SERVERLESS_MEMORY_MB))}")
    if not 1 <= max_concurrency <= 200:
        raise sm.LaunchValidationError(f"--max-concurrency {max_concurrency} is out of range; use 1 to 200")
    return memory_mb, max_concurrency


def _s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _key(prefix: str, *parts: str) -> str:
    return "/".join(p for p in (prefix, *parts) if p)


# ------------------------------------------------------------------------------ reading what exists
_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")


def _probe_client(region: str):
    """A SageMaker client for the dry run's reads: short timeouts and one attempt, so a dry run
    without network answers in seconds."""
    from botocore.config import Config as BotoConfig

    return sm._boto3().client("sagemaker", region_name=region,
                              config=BotoConfig(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}))


def _not_found(exc) -> bool:
    # SageMaker answers a Describe* of a missing resource with ValidationException "Could not find ..."
    err = exc.response.get("Error", {})
    return err.get("Code") == "ValidationException" and "could not find" in str(err.get("Message", "")).lower()


def _describe_endpoint(client, name: str) -> Optional[dict[str, Any]]:
    """DescribeEndpoint's answer, or None when there is no such endpoint."""
    from botocore.exceptions import ClientError

    try:
        return client.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise


def _tags_of(client, arn: str) -> list[dict[str, str]]:
    tags: list[dict[str, str]] = []
    for page in client.get_paginator("list_tags").paginate(ResourceArn=arn):
        tags += page.get("Tags", [])
    return tags


def _tagged_for(client, endpoint: str) -> tuple[list[str], list[str]]:
    """(endpoint configs, models) tagged ``threadsum:endpoint=<endpoint>``: ListEndpointConfigs and
    ListModels narrowed by the name prefix ``deploy`` gives them, then ListTags of each."""
    mine = {"Key": TAG_ENDPOINT, "Value": endpoint}
    prefix = sm.stamp_prefix(endpoint)
    configs = [c["EndpointConfigName"]
               for page in client.get_paginator("list_endpoint_configs").paginate(NameContains=prefix)
               for c in page.get("EndpointConfigs", [])
               if mine in _tags_of(client, c["EndpointConfigArn"])]
    models = [m["ModelName"]
              for page in client.get_paginator("list_models").paginate(NameContains=prefix)
              for m in page.get("Models", [])
              if mine in _tags_of(client, m["ModelArn"])]
    return configs, models


def _config_models(client, config: str) -> list[str]:
    from botocore.exceptions import ClientError

    try:
        variants = client.describe_endpoint_config(EndpointConfigName=config).get("ProductionVariants", [])
    except ClientError as exc:
        if _not_found(exc):
            return []
        raise
    return list(dict.fromkeys(v["ModelName"] for v in variants if v.get("ModelName")))


def _replaced_plan(client, endpoint: str, current: dict[str, Any]) -> tuple[list[tuple[str, dict]], list[str]]:
    """The deletes that follow a successful update: the endpoint's previous config and its models,
    each only if tagged for this endpoint. Returns (requests, names kept because untagged)."""
    from botocore.exceptions import ClientError

    mine = {"Key": TAG_ENDPOINT, "Value": endpoint}
    config = current["EndpointConfigName"]
    plan: list[tuple[str, dict]] = []
    kept: list[str] = []
    arn = client.describe_endpoint_config(EndpointConfigName=config)["EndpointConfigArn"]
    if mine in _tags_of(client, arn):
        plan.append(("DeleteEndpointConfig", {"EndpointConfigName": config}))
    else:
        kept.append(f"endpoint config {config}")
    for model in _config_models(client, config):
        try:
            arn = client.describe_model(ModelName=model)["ModelArn"]
        except ClientError as exc:
            if _not_found(exc):
                continue  # deleted already
            raise
        if mine in _tags_of(client, arn):
            plan.append(("DeleteModel", {"ModelName": model}))
        else:
            kept.append(f"model {model}")
    return plan, kept


def _refuse_busy(current: Optional[dict[str, Any]], name: str) -> None:
    if current is None:
        return
    state = current.get("EndpointStatus")
    if state in _BUSY:
        raise sm.SageMakerError(f"endpoint {name} is {state}; wait until it is InService "
                                f"(aws sagemaker wait endpoint-in-service --endpoint-name {name}) and deploy again")
    if state in ("Failed", "OutOfService"):
        raise sm.SageMakerError(f"endpoint {name} is {state} and cannot be updated; remove it with "
                                f"`threadsum sagemaker undeploy {name}` and deploy again")


# ------------------------------------------------------------------------------ deploy
def deploy(model: str | Path, *, name: str, role: Optional[str], s3_prefix: Optional[str],
           region: Optional[str] = None, instance_type: Optional[str] = "ml.g5.xlarge", instance_count: int = 1,
           serverless: bool = False, memory_mb: int = 4096, max_concurrency: int = 5,
           async_output: Optional[str] = None, image: Optional[str] = None, overrides: Optional[list[str]] = None,
           wait: bool = True, keep_previous: bool = False, dry_run: bool = False, now: Optional[datetime] = None,
           log: TextIO = sys.stderr) -> dict[str, Any]:
    """Package ``model`` (a model folder, a ``model.tar.gz``, or an ``s3://`` archive), upload it,
    create a model and an endpoint config named ``<name>-YYYYmmdd-HHMMSS`` (UTC ``now``;
    :func:`~threadsum.cloud.sagemaker.stamped_name`), and point the endpoint ``name`` at them:
    CreateEndpoint when it does not exist, else UpdateEndpoint (blue/green: SageMaker keeps the
    old variant serving until the new one is InService). Everything created is tagged
    ``threadsum:endpoint=<name>`` (:func:`endpoint_tags`).

    After an update that was waited for and is InService on the new config, the previous config
    and its models are deleted if they carry that tag (``keep_previous`` keeps them, e.g. to roll
    back with UpdateEndpoint); untagged ones are never deleted.

    Returns {"name", "model_name", "config_name", "action" ("create" | "update"), "requests":
    [(operation, request), ...] in the order sent, "after_update": the deletes that follow a
    successful update, "kept", "uploads", "dry_run", "assumption" (None, or why the dry run
    assumed a new endpoint)} and, after a real deploy, "status" and "deleted".

    With ``dry_run`` nothing is uploaded or changed; DescribeEndpoint (and the reads that name the
    previous resources) are called when credentials work, to choose UpdateEndpoint or CreateEndpoint.

    Raises:
        LaunchValidationError: a bad role, region, instance type, name, S3 URI or serverless
            setting (exit 2, the message names the fix).
        ModelFolderError: ``model`` is not a model folder (exit 2).
        SageMakerError: an AWS call failed, the endpoint is busy or failed, or the update did not
            take (SageMaker rolled back to the previous config).
    """
    name = sm.validate_job_name(name, "endpoint name")
    role = sm.validate_role(role)
    region = sm.validate_region(sm._session_region(region))
    sless = _validate_serverless(memory_mb, max_concurrency) if serverless else None
    if sless is None:
        sm.validate_instance_type(instance_type or "")
    if async_output is not None:
        if serverless:
            raise sm.LaunchValidationError("--async and --serverless cannot be combined; pick one")
        sm.parse_s3_uri(async_output, "--output-s3")
    image = sm.validate_image_uri(image, "--image") if image else inference_image_uri(region, None if sless else instance_type)
    version = sm.validate_job_name(sm.stamped_name(name, now), "model name")
    uploads: list[dict[str, str]] = []
    model_s = str(model)
    if model_s.startswith("s3://"):
        sm.parse_s3_uri(model_s, "MODEL")
        model_data = model_s
    else:
        bucket, prefix = sm.parse_s3_uri(s3_prefix)
        path = Path(model)
        if not (path.is_file() and path.name.endswith(".tar.gz")):
            hosting.validate_model_dir(path, MODEL_FOLDER_FIX)
        # one key per version: instances the old variant starts during the switch still get the old archive
        model_data = _s3_uri(bucket, _key(prefix, name, version, ARCHIVE_NAME))
        uploads.append({"local": str(path), "s3": model_data})
    tags = endpoint_tags(name)
    create = [
        ("CreateModel", model_request(version, image, model_data, role, region, overrides, tags=tags)),
        ("CreateEndpointConfig", endpoint_config_request(version, instance_type=instance_type,
                                                         instance_count=instance_count, serverless=sless,
                                                         async_output=async_output, tags=tags)),
    ]
    result: dict[str, Any] = {"name": name, "model_name": version, "config_name": version, "uploads": uploads,
                              "dry_run": dry_run, "assumption": None}
    if dry_run:
        try:
            current, after, kept = _read_endpoint(_probe_client(region), name, keep_previous)
        except (sm.SageMakerError, MissingExtraError) as exc:
            current, after, kept = None, [], []
            result["assumption"] = (f"could not read endpoint {name} ({exc}); assuming it does not exist "
                                    "(CreateEndpoint): a real run checks first and calls UpdateEndpoint if it does")
        _refuse_busy(current, name)
        result.update(_plan(create, name, version, tags, current, after, kept))
        return result
    result.update(_deploy(create, name, version, tags, uploads, region, wait, keep_previous, log))
    return result


@sm._aws_errors("read endpoint")
def _read_endpoint(client, name: str, keep_previous: bool):
    current = _describe_endpoint(client, name)
    after, kept = ([], []) if current is None or keep_previous else _replaced_plan(client, name, current)
    return current, after, kept


def _plan(create, name, version, tags, current, after, kept) -> dict[str, Any]:
    if current is None:
        last = ("CreateEndpoint", {"EndpointName": name, "EndpointConfigName": version, "Tags": tags})
    else:
        last = ("UpdateEndpoint", {"EndpointName": name, "EndpointConfigName": version})
    return {"action": "create" if current is None else "update", "requests": [*create, last],
            "after_update": after, "kept": kept}


@sm._aws_errors("deploy")
def _deploy(create, name, version, tags, uploads, region, wait, keep_previous, log) -> dict[str, Any]:
    client = sm._client("sagemaker", region)
    current, after, kept = _read_endpoint(client, name, keep_previous)
    _refuse_busy(current, name)
    plan = _plan(create, name, version, tags, current, after, kept)
    if uploads:
        _upload_model(uploads[0]["local"], uploads[0]["s3"], region, log)
    for op, req in plan["requests"]:
        getattr(client, _snake(op))(**req)
    verb = "created" if current is None else "updating (the previous config serves until the new one is InService)"
    print(f"model and endpoint config {version}; endpoint {name} {verb}", file=log)
    out: dict[str, Any] = {**plan, "deleted": []}
    if not wait:
        out["status"] = client.describe_endpoint(EndpointName=name)["EndpointStatus"]
        if after:
            print(f"not waiting, so {len(after)} previous resources stay; `threadsum sagemaker undeploy {name}` "
                  "removes every resource tagged for the endpoint", file=log)
        return out
    from botocore.exceptions import WaiterError

    try:
        client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 30, "MaxAttempts": 120})
    except WaiterError:
        pass  # the state and the reason are read and reported just below
    d = client.describe_endpoint(EndpointName=name)
    out["status"] = d["EndpointStatus"]
    if d["EndpointStatus"] in _BUSY:
        raise sm.SageMakerError(f"endpoint {name} is still {d['EndpointStatus']} after an hour; follow it in the "
                                "SageMaker console (the previous config, if any, serves until the new one is "
                                f"InService), then `threadsum sagemaker undeploy {name}` or deploy again")
    if d["EndpointStatus"] != "InService" or d.get("EndpointConfigName") != version:
        serving = (f"; it still serves {d.get('EndpointConfigName')}" if current is not None
                   and d.get("EndpointConfigName") != version else "")
        raise sm.SageMakerError(f"endpoint {name} is {d['EndpointStatus']}{serving}: "
                                f"{d.get('FailureReason') or f'see CloudWatch /aws/sagemaker/Endpoints/{name}'}")
    out["deleted"] = _delete(client, after, log)
    return out


def _delete(client, requests: list[tuple[str, dict]], log: TextIO) -> list[tuple[str, dict]]:
    """Send the Delete* ``requests`` in order; one already gone counts as done. Returns those sent."""
    from botocore.exceptions import ClientError

    done = []
    for op, req in requests:
        try:
            getattr(client, _snake(op))(**req)
        except ClientError as exc:
            if not _not_found(exc):
                raise
        print(f"{op} {next(iter(req.values()))}", file=log)
        done.append((op, req))
    return done


def _upload_model(local: str, uri: str, region: str, log: TextIO) -> None:
    bucket, key = sm.parse_s3_uri(uri)
    s3 = sm._client("s3", region)
    path = Path(local)
    with tempfile.TemporaryDirectory() as tmp:
        archive = path if path.is_file() else Path(package(path, Path(tmp) / ARCHIVE_NAME)["archive"])
        print(f"uploading {archive.stat().st_size / 1e6:.1f} MB to {uri}", file=log)
        s3.upload_file(str(archive), bucket, key)


# ------------------------------------------------------------------------------ invoke, undeploy
@sm._aws_errors("invoke")
def invoke(name: str, body: bytes, *, content_type: str = hosting.JSON, region: Optional[str] = None,
           dry_run: bool = False) -> dict[str, Any]:
    """Send one request to the endpoint (InvokeEndpoint); returns {"request", "body", "content_type"}.

    Raises:
        LaunchValidationError: a bad name or region; SageMakerError: the call failed.
    """
    name = sm.validate_job_name(name, "endpoint name")
    region = sm.validate_region(sm._session_region(region))
    request = {"EndpointName": name, "ContentType": content_type, "Accept": content_type, "Body": body}
    shown = {**request, "Body": f"<{len(body)} bytes>"}
    if dry_run:
        return {"request": shown}
    r = sm._client("sagemaker-runtime", region).invoke_endpoint(**request)
    return {"request": shown, "body": r["Body"].read(), "content_type": r.get("ContentType")}


def undeploy(name: str, *, region: Optional[str] = None, dry_run: bool = False,
             log: TextIO = sys.stderr) -> dict[str, Any]:
    """Delete the endpoint, then every endpoint config and model of it: the current config and its
    models (DescribeEndpoint, DescribeEndpointConfig) and all tagged ``threadsum:endpoint=<name>``
    (earlier deploys, failed updates, ``--keep-previous``).

    The dry run makes the same reads when credentials work; else it lists DeleteEndpoint only and
    says why ("assumption").

    Returns {"requests": [(operation, request), ...], "dry_run", "assumption"}.

    Raises:
        LaunchValidationError: a bad name or region.
        SageMakerError: no such endpoint and nothing tagged for it, or an AWS call failed.
    """
    name = sm.validate_job_name(name, "endpoint name")
    region = sm.validate_region(sm._session_region(region))
    if dry_run:
        try:
            requests = _undeploy_plan(_probe_client(region), name, region)
        except (sm.SageMakerError, MissingExtraError) as exc:
            return {"requests": [("DeleteEndpoint", {"EndpointName": name})], "dry_run": True,
                    "assumption": f"could not read endpoint {name} ({exc}); its configs and models are found at run time"}
        return {"requests": requests, "dry_run": True, "assumption": None}
    client = sm._client("sagemaker", region)
    requests = _undeploy_plan(client, name, region)
    _aws_delete(client, requests, log)
    return {"requests": requests, "dry_run": False, "assumption": None}


@sm._aws_errors("undeploy")
def _undeploy_plan(client, name: str, region: str) -> list[tuple[str, dict]]:
    current = _describe_endpoint(client, name)
    configs, models = _tagged_for(client, name)
    if current is not None:
        config = current["EndpointConfigName"]
        configs = list(dict.fromkeys([config, *configs]))
        models = list(dict.fromkeys([*_config_models(client, config), *models]))
    if current is None and not configs and not models:
        raise sm.SageMakerError(f"no endpoint {name} and nothing tagged {TAG_ENDPOINT}={name} in {region}; "
                                "list endpoints with `aws sagemaker list-endpoints`")
    return [*([("DeleteEndpoint", {"EndpointName": name})] if current is not None else []),
            *[("DeleteEndpointConfig", {"EndpointConfigName": c}) for c in configs],
            *[("DeleteModel", {"ModelName": m}) for m in models]]


@sm._aws_errors("undeploy")
def _aws_delete(client, requests, log) -> None:
    _delete(client, requests, log)


def _snake(op: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in op).lstrip("_")


# ------------------------------------------------------------------------------ transform
def is_model_source(model: str) -> bool:
    """Whether MODEL of ``transform`` is something to make a model from (an ``s3://`` archive, or a
    local model folder or ``.tar.gz``) rather than the name of a SageMaker model or endpoint."""
    return model.startswith("s3://") or Path(model).exists()


def max_concurrent_transforms(own_image: bool, max_payload_mb: int) -> int:
    """MaxConcurrentTransforms of a job: 1 with the default image (its one TorchServe worker answers
    one request at a time; more would wait in its queue and count against the request timeout),
    else the container's :func:`~threadsum.cloud.hosting.max_concurrent_transforms`; never above
    SageMaker's rule MaxConcurrentTransforms x MaxPayloadInMB <= 100 (MB)."""
    wanted = hosting.max_concurrent_transforms(ServeConfig()) if own_image else 1
    return max(1, min(wanted, hosting.MAX_TRANSFORM_PAYLOAD_MB // max_payload_mb))


def transform_request(job: str, model_name: str, input_s3: str, output_s3: str, instance_type: str,
                      instance_count: int = 1, max_payload_mb: int = hosting.MAX_PAYLOAD_MB,
                      max_concurrent: int = 1, tags: Optional[list[dict[str, str]]] = None) -> dict[str, Any]:
    """The CreateTransformJob request: every JSONL object under ``input_s3``, split by line
    (SplitType Line), sent in MultiRecord requests of at most ``max_payload_mb`` MB,
    ``max_concurrent`` at a time per instance, each allowed :data:`LONG_REQUEST_S` seconds and one
    retry; results assembled by line into ``<output_s3>/<path under input_s3>.out``."""
    return {
        "TransformJobName": job, "ModelName": model_name,
        "BatchStrategy": "MultiRecord", "MaxPayloadInMB": max_payload_mb, "MaxConcurrentTransforms": max_concurrent,
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": LONG_REQUEST_S, "InvocationsMaxRetries": 1},
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_s3}},
                           "ContentType": hosting.JSONLINES, "SplitType": "Line", "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": output_s3, "Accept": hosting.JSONLINES, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
        "Tags": list(tags or []),
    }


def transform(model: str, input_s3: str, output_s3: str, *, job: str, role: Optional[str] = None,
              s3_prefix: Optional[str] = None, image: Optional[str] = None, overrides: Optional[list[str]] = None,
              instance_type: str = "ml.g5.xlarge", instance_count: int = 1,
              max_payload_mb: int = hosting.MAX_PAYLOAD_MB, region: Optional[str] = None,
              to: Optional[str | Path] = None, poll_seconds: float = 30.0, dry_run: bool = False,
              log: TextIO = sys.stderr) -> dict[str, Any]:
    """Run Batch Transform over the JSON Lines under ``input_s3`` (one thread a line), wait for the
    job, and with ``to`` download the ``.out`` files (the input folder structure kept) and check
    that each has as many lines as its input.

    ``model`` is a model folder, ``model.tar.gz`` or ``s3://`` archive (a model named ``job`` is
    created from it, tagged ``threadsum:transform=<job>``; needs ``role``, and ``s3_prefix`` for a
    local one), or the name of a SageMaker model, or of an endpoint (its current model).

    Returns {"requests": [(operation, request), ...], "model_name", "uploads", "dry_run",
    "assumption"} and after a real run "status", "files" (downloaded paths) and "lines".

    Raises:
        LaunchValidationError: a bad name, S3 URI, region, role, instance type or payload size (exit 2).
        ModelFolderError: ``model`` is a folder but not a model folder (exit 2).
        SageMakerError: no such model or endpoint, the job failed, an AWS call failed, or the
            results do not reconcile with the inputs (a file missing, or other line counts).
    """
    job = sm.validate_job_name(job, "transform job name")
    sm.parse_s3_uri(input_s3, "--input-s3")
    sm.parse_s3_uri(output_s3, "--output-s3")
    sm.validate_instance_type(instance_type)
    if not 1 <= max_payload_mb <= hosting.MAX_TRANSFORM_PAYLOAD_MB:
        raise sm.LaunchValidationError(f"--max-payload-mb {max_payload_mb} is outside 1-{hosting.MAX_TRANSFORM_PAYLOAD_MB}"
                                       " (Batch Transform's limit)")
    region = sm.validate_region(sm._session_region(region))
    requests: list[tuple[str, dict]] = []
    uploads: list[dict[str, str]] = []
    result: dict[str, Any] = {"dry_run": dry_run, "assumption": None, "uploads": uploads}
    if is_model_source(model):
        role = sm.validate_role(role)
        own = image is not None
        image = sm.validate_image_uri(image, "--image") if image else inference_image_uri(region, instance_type)
        if model.startswith("s3://"):
            model_data = model
        else:
            bucket, prefix = sm.parse_s3_uri(s3_prefix)
            path = Path(model)
            if not (path.is_file() and path.name.endswith(".tar.gz")):
                hosting.validate_model_dir(path, MODEL_FOLDER_FIX)
            model_data = _s3_uri(bucket, _key(prefix, job, ARCHIVE_NAME))
            uploads.append({"local": str(path), "s3": model_data})
        tags = [{"Key": TAG_TRANSFORM, "Value": job}]
        requests.append(("CreateModel", model_request(job, image, model_data, role, region, overrides,
                                                      tags=tags, long_requests=True)))
        model_name = job
    else:
        sm.validate_job_name(model, "model name")
        tags = []
        try:
            model_name, own = _existing_model(_probe_client(region) if dry_run else sm._client("sagemaker", region), model)
        except (sm.SageMakerError, MissingExtraError) as exc:
            if not dry_run or "no SageMaker model" in str(exc):
                raise
            model_name, own = model, False
            result["assumption"] = (f"could not read model {model} ({exc}); assuming it is a model name "
                                    "with the default image (MaxConcurrentTransforms 1)")
    requests.append(("CreateTransformJob", transform_request(
        job, model_name, input_s3, output_s3, instance_type, instance_count, max_payload_mb,
        max_concurrent_transforms(own, max_payload_mb), tags)))
    result.update(requests=requests, model_name=model_name)
    if dry_run:
        return result
    if uploads:
        _upload_model(uploads[0]["local"], uploads[0]["s3"], region, log)
    result.update(_transform(requests, region, to, poll_seconds, log))
    return result


@sm._aws_errors("transform")
def _existing_model(client, name: str) -> tuple[str, bool]:
    """(model name, whether its image is not the default one) of a model ``name``, or of the model
    an endpoint ``name`` serves."""
    from botocore.exceptions import ClientError

    try:
        d = client.describe_model(ModelName=name)
    except ClientError as exc:
        if not _not_found(exc):
            raise
        current = _describe_endpoint(client, name)
        models = _config_models(client, current["EndpointConfigName"]) if current else []
        if len(models) != 1:
            raise sm.SageMakerError(f"no SageMaker model {name} (nor an endpoint serving one model by that name); "
                                    "pass a model folder, an s3:// model.tar.gz, or a name from `aws sagemaker "
                                    "list-models`") from None
        d = client.describe_model(ModelName=models[0])
    container = d.get("PrimaryContainer") or (d.get("Containers") or [{}])[0]
    own = sm.images()["inference"]["repository"] not in container.get("Image", "")
    return d["ModelName"], own


@sm._aws_errors("transform")
def _transform(requests, region, to, poll_seconds, log) -> dict[str, Any]:
    client = sm._client("sagemaker", region)
    for op, req in requests:
        getattr(client, _snake(op))(**req)
    request = requests[-1][1]
    job = request["TransformJobName"]
    print(f"created transform job {job}", file=log)
    while True:
        d = client.describe_transform_job(TransformJobName=job)
        state = d["TransformJobStatus"]
        if state in sm.TERMINAL_STATES:
            break
        time.sleep(poll_seconds)
    if state != "Completed":
        raise sm.SageMakerError(f"transform job {job} is {state}: {d.get('FailureReason', 'no reason given')}")
    out: dict[str, Any] = {"status": state, "files": [], "lines": 0}
    if to is not None:
        out.update(fetch_results(request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"],
                                 request["TransformOutput"]["S3OutputPath"], to, sm._client("s3", region), log))
    return out


def fetch_results(input_s3: str, output_s3: str, to: str | Path, s3, log: TextIO = sys.stderr) -> dict[str, Any]:
    """Download ``<output_s3>/<rel>.out`` of every input object ``<input_s3>/<rel>`` to ``to/<rel>.out``
    and check each against its input: as many records (:func:`~threadsum.cloud.hosting.jsonl_records`)
    as the input has lines, since Batch Transform (SplitType Line, AssembleWith Line) answers line
    for line.

    Returns {"files": [downloaded paths], "lines": result lines in all}.

    Raises:
        SageMakerError: no input objects, or an input without its ``.out`` or with other line counts
            (the files that did come are downloaded first; the message names up to 5 problems).
    """
    from botocore.exceptions import ClientError

    in_bucket, in_key = sm.parse_s3_uri(input_s3, "--input-s3")
    out_bucket, out_key = sm.parse_s3_uri(output_s3, "--output-s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=in_bucket, Prefix=in_key)
            for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    if not keys:
        raise sm.SageMakerError(f"no input objects under {input_s3}")
    files: list[str] = []
    problems: list[str] = []
    total = 0
    for key in keys:
        rel = key[len(in_key):].lstrip("/") or PurePosixPath(key).name  # the prefix may name one object
        result_key = _key(out_key.rstrip("/"), f"{rel}.out")
        try:
            got = s3.get_object(Bucket=out_bucket, Key=result_key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            problems.append(f"{key}: no result at s3://{out_bucket}/{result_key}")
            continue
        dest = Path(to, *PurePosixPath(f"{rel}.out").parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(got)
        files.append(str(dest))
        n_in = len(hosting.jsonl_records(s3.get_object(Bucket=in_bucket, Key=key)["Body"].read()))
        n_out = len(hosting.jsonl_records(got))
        total += n_out
        if n_in != n_out:
            problems.append(f"{key}: {n_in} input lines, {n_out} result lines")
    print(f"fetched {len(files)} result files ({total} lines) to {to}", file=log)
    if problems:
        raise sm.SageMakerError(f"the results do not match the inputs in {len(problems)} of {len(keys)} files: "
                                + "; ".join(problems[:5]) + "; the job's log is CloudWatch /aws/sagemaker/TransformJobs")
    return {"files": files, "lines": total}
