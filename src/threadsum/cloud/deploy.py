"""SageMaker inference with boto3: package a model folder, deploy it (real-time, serverless or
asynchronous), invoke, undeploy, and run Batch Transform over JSON Lines in S3.

One name ``N`` is used for the model, the endpoint config and the endpoint, so ``undeploy N``
removes all three. What ``deploy`` puts where (``P`` = ``--s3-prefix``)::

    P/N/model.tar.gz    the archive of :func:`package` (SageMaker unpacks it in /opt/ml/model)

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
from pathlib import Path, PurePosixPath
from typing import Any, Optional, TextIO

from threadsum.cloud import hosting
from threadsum.cloud import sagemaker as sm

VARIANT = "AllTraffic"
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
                  overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """The CreateModel request. Environment: the toolkit's entry script and one model server
    worker (one copy of the model per instance; the threadsum batcher does the concurrency),
    ``THREADSUM_OVERRIDES`` when ``overrides`` are given."""
    env = {
        "SAGEMAKER_PROGRAM": INFERENCE_SCRIPT,
        "SAGEMAKER_SUBMIT_DIRECTORY": f"/opt/ml/model/{CODE_DIR}",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": region,
        "TOKENIZERS_PARALLELISM": "false",
    }
    if overrides:
        env[hosting.OVERRIDES_ENV] = " ".join(shlex.quote(o) for o in overrides)
    return {"ModelName": name, "ExecutionRoleArn": role,
            "PrimaryContainer": {"Image": image, "ModelDataUrl": model_data, "Environment": env},
            "Tags": [{"Key": "threadsum:model", "Value": name}]}


def endpoint_config_request(name: str, *, instance_type: Optional[str], instance_count: int = 1,
                            serverless: Optional[tuple[int, int]] = None,
                            async_output: Optional[str] = None) -> dict[str, Any]:
    """The CreateEndpointConfig request: an instance variant, or ``serverless`` = (MemorySizeInMB,
    MaxConcurrency); ``async_output`` (s3://...) adds AsyncInferenceConfig."""
    variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": name}
    if serverless is not None:
        variant["ServerlessConfig"] = {"MemorySizeInMB": serverless[0], "MaxConcurrency": serverless[1]}
    else:
        variant.update(InstanceType=instance_type, InitialInstanceCount=instance_count)
    req: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": [variant]}
    if async_output is not None:
        req["AsyncInferenceConfig"] = {"OutputConfig": {"S3OutputPath": async_output}}
    return req


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


# ------------------------------------------------------------------------------ deploy
def deploy(model: str | Path, *, name: str, role: Optional[str], s3_prefix: Optional[str],
           region: Optional[str] = None, instance_type: Optional[str] = "ml.g5.xlarge", instance_count: int = 1,
           serverless: bool = False, memory_mb: int = 4096, max_concurrency: int = 5,
           async_output: Optional[str] = None, image: Optional[str] = None, overrides: Optional[list[str]] = None,
           wait: bool = True, dry_run: bool = False, log: TextIO = sys.stderr) -> dict[str, Any]:
    """Package ``model`` (a model folder, a ``model.tar.gz``, or an ``s3://`` archive), upload it,
    and create the model, endpoint config and endpoint ``name``.

    Returns {"name", "requests": {"CreateModel", "CreateEndpointConfig", "CreateEndpoint"},
    "uploads", "dry_run"} and, after a real deploy, "status". With ``dry_run`` nothing is uploaded
    and no AWS API is called.

    Raises:
        LaunchValidationError: a bad role, region, instance type, name, S3 URI or serverless
            setting (exit 2, the message names the fix).
        ModelFolderError: ``model`` is not a model folder (exit 2).
        SageMakerError: an AWS call failed.
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
        model_data = _s3_uri(bucket, _key(prefix, name, ARCHIVE_NAME))
        uploads.append({"local": str(path), "s3": model_data})
    requests = {
        "CreateModel": model_request(name, image, model_data, role, region, overrides),
        "CreateEndpointConfig": endpoint_config_request(name, instance_type=instance_type, instance_count=instance_count,
                                                        serverless=sless, async_output=async_output),
        "CreateEndpoint": {"EndpointName": name, "EndpointConfigName": name},
    }
    result: dict[str, Any] = {"name": name, "requests": requests, "uploads": uploads, "dry_run": dry_run}
    if dry_run:
        return result
    result["status"] = _deploy(requests, uploads, region, wait, log)
    return result


@sm._aws_errors("deploy")
def _deploy(requests, uploads, region, wait, log) -> str:
    if uploads:
        _upload_model(uploads[0]["local"], uploads[0]["s3"], region, log)
    client = sm._client("sagemaker", region)
    client.create_model(**requests["CreateModel"])
    client.create_endpoint_config(**requests["CreateEndpointConfig"])
    client.create_endpoint(**requests["CreateEndpoint"])
    name = requests["CreateEndpoint"]["EndpointName"]
    print(f"created model, endpoint config and endpoint {name}", file=log)
    if not wait:
        return client.describe_endpoint(EndpointName=name)["EndpointStatus"]
    client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 30, "MaxAttempts": 60})
    return client.describe_endpoint(EndpointName=name)["EndpointStatus"]


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


@sm._aws_errors("undeploy")
def undeploy(name: str, *, region: Optional[str] = None, dry_run: bool = False) -> dict[str, Any]:
    """Delete the endpoint, its endpoint config and its models. The dry run assumes the names
    ``deploy`` gives (all three ``name``); a real run reads them from DescribeEndpoint/-Config.

    Returns {"requests": [(operation, request), ...]}.
    """
    name = sm.validate_job_name(name, "endpoint name")
    region = sm.validate_region(sm._session_region(region))
    config, models = name, [name]
    client = None
    if not dry_run:
        client = sm._client("sagemaker", region)
        config = client.describe_endpoint(EndpointName=name)["EndpointConfigName"]
        variants = client.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
        models = list(dict.fromkeys(v["ModelName"] for v in variants))
    requests = [("DeleteEndpoint", {"EndpointName": name}),
                ("DeleteEndpointConfig", {"EndpointConfigName": config}),
                *[("DeleteModel", {"ModelName": m}) for m in models]]
    if client is not None:
        for op, req in requests:
            getattr(client, _snake(op))(**req)
    return {"requests": requests, "dry_run": dry_run}


def _snake(op: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in op).lstrip("_")


# ------------------------------------------------------------------------------ transform
def transform_request(job: str, model_name: str, input_s3: str, output_s3: str, instance_type: str,
                      instance_count: int = 1, max_payload_mb: int = hosting.MAX_PAYLOAD_MB) -> dict[str, Any]:
    """The CreateTransformJob request: every JSONL object under ``input_s3``, split by line, sent in
    MultiRecord requests of at most ``max_payload_mb``; results assembled by line (``<file>.out``)."""
    return {
        "TransformJobName": job, "ModelName": model_name,
        "BatchStrategy": "MultiRecord", "MaxPayloadInMB": max_payload_mb,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_s3}},
                           "ContentType": hosting.JSONLINES, "SplitType": "Line", "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": output_s3, "Accept": hosting.JSONLINES, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
    }


def transform(model_name: str, input_s3: str, output_s3: str, *, job: str, instance_type: str = "ml.g5.xlarge",
              instance_count: int = 1, region: Optional[str] = None, to: Optional[str | Path] = None,
              poll_seconds: float = 30.0, dry_run: bool = False, log: TextIO = sys.stderr) -> dict[str, Any]:
    """Run Batch Transform with the SageMaker model ``model_name`` (made by ``deploy``) over the JSON
    Lines under ``input_s3``; waits for the job and downloads the ``.out`` files into ``to``.

    Raises:
        LaunchValidationError: a bad name, S3 URI, region or instance type (exit 2).
        SageMakerError: the job failed or an AWS call failed.
    """
    job = sm.validate_job_name(job, "transform job name")
    sm.validate_job_name(model_name, "model name")
    sm.parse_s3_uri(input_s3, "--input-s3")
    sm.parse_s3_uri(output_s3, "--output-s3")
    sm.validate_instance_type(instance_type)
    region = sm.validate_region(sm._session_region(region))
    request = transform_request(job, model_name, input_s3, output_s3, instance_type, instance_count)
    result: dict[str, Any] = {"request": request, "dry_run": dry_run}
    if dry_run:
        return result
    result.update(_transform(request, region, to, poll_seconds, log))
    return result


@sm._aws_errors("transform")
def _transform(request, region, to, poll_seconds, log) -> dict[str, Any]:
    client = sm._client("sagemaker", region)
    job = request["TransformJobName"]
    client.create_transform_job(**request)
    print(f"created transform job {job}", file=log)
    while True:
        d = client.describe_transform_job(TransformJobName=job)
        state = d["TransformJobStatus"]
        if state in sm.TERMINAL_STATES:
            break
        time.sleep(poll_seconds)
    if state != "Completed":
        raise sm.SageMakerError(f"transform job {job} is {state}: {d.get('FailureReason', 'no reason given')}")
    files: list[str] = []
    if to is not None:
        bucket, prefix = sm.parse_s3_uri(request["TransformOutput"]["S3OutputPath"])
        s3 = sm._client("s3", region)
        Path(to).mkdir(parents=True, exist_ok=True)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(".out"):
                    dest = Path(to) / PurePosixPath(obj["Key"]).name
                    s3.download_file(bucket, obj["Key"], str(dest))
                    files.append(str(dest))
    return {"status": state, "files": files}
