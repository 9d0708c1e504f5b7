"""Run `threadsum train` as an AWS SageMaker training job: launch, status, logs, stop, fetch.

Built on boto3 (the ``sagemaker`` extra), not the SageMaker Python SDK: a training job is one
CreateTrainingJob request, and writing it out ourselves keeps the request visible (``--dry-run``
prints exactly what is sent), the dependency small, and the tests on moto's real HTTP server.

What ``launch`` puts where (``P`` = ``--s3-prefix``, ``J`` = the job name)::

    P/J/code/sourcedir.tar.gz   this package + threadsum_entry.py + requirements.txt + config.yaml
    P/J/data/prepared/...       the prepared dataset (channel 'prepared'), or
    P/J/data/raw/...            data.source when nothing is prepared yet (channel 'raw'; the job
                                runs `threadsum prepare` first)
    P/J/checkpoints/            CheckpointConfig: synced with /opt/ml/checkpoints in the job
    P/J/output/model.tar.gz     the final model (SageMaker writes it there)

The job runs the AWS Hugging Face PyTorch training container; the SageMaker training toolkit in it
installs requirements.txt and runs ``threadsum_entry.py``, which is :func:`threadsum.cloud.container.main`.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Optional, TextIO

from threadsum.cloud import container
from threadsum.config import Config
from threadsum.errors import UserError

#: Instance used when neither --instance-type, sagemaker.instance_type nor the planner picks one:
#: one A10G (24 GB), enough for bart-large full fine-tuning in bf16 with a 16k-token budget.
DEFAULT_INSTANCE_TYPE = "ml.g5.2xlarge"
ENTRY_POINT = "threadsum_entry.py"
SOURCEDIR_NAME = "sourcedir.tar.gz"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
MAX_RUNTIME_SECONDS = 28 * 24 * 3600  # SageMaker's upper limit on MaxRuntimeInSeconds
TERMINAL_STATES = ("Completed", "Failed", "Stopped")

# Libraries whose API the training code depends on: the job installs at least the versions tested
# here (the container's own copies may be older). torch is never reinstalled: the image's CUDA
# build is the point of using the image.
_PINNED_AT_LEAST_LOCAL = ("transformers", "tokenizers", "accelerate", "peft", "datasets", "safetensors")
_NEVER_INSTALL = ("torch",)

_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ROLE_ARN = re.compile(r"^arn:aws(-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>[^\s]*))?$")
_INSTANCE = re.compile(r"^ml\.[a-z][a-z0-9-]*\.(?:\d*xlarge|large|medium|small)$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_IMAGE = re.compile(r"^[\w.-]+(:\d+)?/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})$")


class SageMakerError(UserError):
    """A SageMaker operation failed or was asked for something impossible; the message says the fix."""


class LaunchValidationError(SageMakerError, ValueError):
    """An input of `sagemaker launch` is malformed; the message names the option and a valid example."""


# ------------------------------------------------------------------------------ validation
def validate_job_name(name: str, what: str = "job name") -> str:
    """Return ``name`` if it is a valid SageMaker resource name (``what`` names it in the message).

    The rule (1-63 letters, digits and hyphens, starting and ending with a letter or digit) is
    SageMaker's TrainingJobName constraint, and equally EndpointName's, ModelName's and
    TransformJobName's.

    Raises:
        LaunchValidationError: ``name`` is empty or breaks the rule; the message gives an example.
    """
    if not _JOB_NAME.match(name or ""):
        raise LaunchValidationError(
            f"{what} '{name}' is invalid: use 1-63 letters, digits and hyphens, starting and ending "
            "with a letter or digit (e.g. threadsum-bart-large-20250101-120000)"
        )
    return name


def validate_role(role: Optional[str]) -> str:
    """Return ``role`` if it is an IAM role ARN (``arn:<partition>:iam::<12-digit account>:role/<name>``).

    Raises:
        LaunchValidationError: ``role`` is missing (no --role, no sagemaker.role) or is not a role ARN.
    """
    if not role:
        raise LaunchValidationError(
            "no IAM role: pass --role arn:aws:iam::<account>:role/<SageMakerExecutionRole> or set sagemaker.role"
        )
    if not _ROLE_ARN.match(role):
        raise LaunchValidationError(
            f"--role '{role}' is not an IAM role ARN; expected arn:aws:iam::123456789012:role/SageMakerRole"
        )
    return role


def parse_s3_uri(uri: Optional[str], what: str = "--s3-prefix") -> tuple[str, str]:
    """'s3://bucket/a/b/' -> ('bucket', 'a/b')."""
    if not uri:
        raise LaunchValidationError(f"no S3 location: pass {what} s3://<bucket>/<prefix> or set sagemaker.s3_prefix")
    m = _S3_URI.match(uri)
    bucket = m.group("bucket") if m else ""
    if not m or ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket) or "//" in (m.group("key") or ""):
        raise LaunchValidationError(
            f"{what} '{uri}' is not a valid S3 URI; expected s3://<bucket>/<prefix> with a lowercase "
            "bucket name of 3-63 letters, digits, dots or hyphens (e.g. s3://my-bucket/threadsum)"
        )
    return bucket, (m.group("key") or "").strip("/")


def validate_instance_type(instance_type: str) -> str:
    """Return ``instance_type`` if it looks like a SageMaker instance type name (``ml.<family>.<size>``).

    Only the form is checked, not whether the type exists in a region or the account's quota.

    Raises:
        LaunchValidationError: the name does not have the ``ml.<family>.<size>`` form (e.g. ml.g5.2xlarge).
    """
    if not _INSTANCE.match(instance_type or ""):
        raise LaunchValidationError(
            f"instance type '{instance_type}' is not a SageMaker instance type name; expected e.g. "
            "ml.g5.2xlarge, ml.g6e.xlarge or ml.p4d.24xlarge"
        )
    return instance_type


def validate_region(region: Optional[str]) -> str:
    """Return ``region`` if it has the form of an AWS region name (e.g. us-east-1, us-gov-west-1).

    Raises:
        LaunchValidationError: no region was given or configured, or it is not a region name.
    """
    if not region:
        raise LaunchValidationError(
            "no AWS region: pass --region (e.g. us-east-1), set sagemaker.region, or configure a default "
            "region (AWS_DEFAULT_REGION or `aws configure`)"
        )
    if not _REGION.match(region):
        raise LaunchValidationError(f"--region '{region}' is not an AWS region name (e.g. us-east-1, eu-west-1)")
    return region


def validate_image_uri(uri: str, what: str = "sagemaker.image_uri") -> str:
    """Return ``uri`` if it has the form of a container image URI (registry/repository:tag or @sha256:digest).

    Raises:
        LaunchValidationError: the text is not an image URI; the message shows the expected form.
    """
    if not _IMAGE.match(uri or ""):
        raise LaunchValidationError(
            f"{what} '{uri}' is not an image URI like <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>"
        )
    return uri


# ------------------------------------------------------------------------------ images, instances
def images() -> dict[str, Any]:
    """The image table ``resources/sagemaker_images.json`` (training and inference images, registries)."""
    return _images()


def _images() -> dict[str, Any]:
    return json.loads(resources.files("threadsum").joinpath("resources/sagemaker_images.json").read_text())


def default_image_uri(region: str) -> str:
    """The AWS Hugging Face PyTorch training container for the region."""
    data = _images()
    account = data["registries"].get(region, data["default_account"])
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/{data['repository']}:{data['tag']}"


def gpus_per_instance(instance_type: str) -> Optional[int]:
    """GPUs of a known GPU instance type; None when the type is not in the table."""
    return _images()["gpus_per_instance"].get(instance_type)


def default_instance_type(cfg: Config) -> tuple[str, str]:
    """(instance type, where the choice came from): config, then the planner, then the default."""
    if cfg.sagemaker.instance_type:
        return cfg.sagemaker.instance_type, "sagemaker.instance_type"
    try:
        from threadsum.train import cost  # optional: the planner may not offer a pick
    except ImportError:
        cost = None
    pick = getattr(cost, "pick_instance", None) if cost is not None else None
    if callable(pick):
        try:
            choice = pick(cfg)
        except Exception as exc:  # the planner is advice: a failure there must not block a launch
            print(f"note: the planner could not pick an instance ({exc}); using {DEFAULT_INSTANCE_TYPE}", file=sys.stderr)
            choice = None
        if isinstance(choice, dict):
            choice = choice.get("instance_type")
        if isinstance(choice, str) and choice:
            return choice, "planner (threadsum.train.cost.pick_instance)"
    return DEFAULT_INSTANCE_TYPE, "default"


def default_job_name(cfg: Config, now: Optional[datetime] = None) -> str:
    """A job name ``threadsum-<cfg.name>-YYYYmmdd-HHMMSS`` (UTC) that fits SageMaker's 63-character limit.

    Args:
        cfg: the run config; ``cfg.name`` is reduced to letters, digits and hyphens and cut so the
            timestamp always fits.
        now: the time to stamp (default: the current UTC time).
    """
    return stamped_name(f"threadsum-{cfg.name}", now)


NAME_MAX = 63
"""Longest SageMaker resource name (TrainingJobName, ModelName, EndpointConfigName, EndpointName)."""

_STAMP = "%Y%m%d-%H%M%S"
_STAMP_LEN = len("20250101-120000")


def resource_name(text: str) -> str:
    """``text`` reduced to a SageMaker resource name: runs of other characters become one hyphen,
    no hyphen at either end, at most 63 characters ('threadsum' when nothing is left)."""
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:NAME_MAX].rstrip("-") or "threadsum"


def stamp_prefix(base: str) -> str:
    """The part of :func:`stamped_name` before the timestamp: ``base`` reduced
    (:func:`resource_name`) and cut so ``-YYYYmmdd-HHMMSS`` fits in 63 characters."""
    return resource_name(base)[: NAME_MAX - _STAMP_LEN - 1].rstrip("-")


def stamped_name(base: str, now: Optional[datetime] = None) -> str:
    """``<stamp_prefix(base)>-YYYYmmdd-HHMMSS`` (UTC ``now``, default the current time): a valid
    SageMaker name (:func:`validate_job_name`) of at most 63 characters, unique per second."""
    return f"{stamp_prefix(base)}-{(now or datetime.now(timezone.utc)).strftime(_STAMP)}"


# ------------------------------------------------------------------------------ the source bundle
def _package_dir() -> Path:
    import threadsum

    return Path(threadsum.__file__).resolve().parent


def requirements_txt(extra: str = "train") -> str:
    """requirements.txt for a SageMaker container: the package's core + ``extra`` dependencies
    (``train`` for jobs, ``serve`` for endpoints), minus torch (the image's CUDA build is kept)."""
    lines: list[str] = []
    seen: set[str] = set()
    for req in metadata.requires("threadsum") or []:
        spec, _, marker = req.partition(";")
        if marker and "extra" in marker and f'"{extra}"' not in marker and f"'{extra}'" not in marker:
            continue
        spec = spec.strip()
        name = re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower()
        if name in _NEVER_INSTALL or name in seen:
            continue
        seen.add(name)
        if name in _PINNED_AT_LEAST_LOCAL:
            try:
                spec = f"{name}>={metadata.version(name)}"
            except metadata.PackageNotFoundError:
                pass
        lines.append(spec)
    return "\n".join(lines) + "\n"


_ENTRY_SOURCE = '''"""SageMaker entry point of threadsum: see threadsum/cloud/container.py."""
import sys

from threadsum.cloud.container import main

sys.exit(main(sys.argv[1:]))
'''


def build_sourcedir(cfg: Config, dest: str | Path) -> Path:
    """Write sourcedir.tar.gz: the threadsum package, the entry script, requirements and the config.

    The archive is reproducible (sorted names, zero mtimes/owners), so the same code and config give
    the same bytes.
    """
    dest = Path(dest)
    pkg = _package_dir()

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))

    files = sorted(
        p for p in pkg.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )
    # gzip's header holds a file name and a time: blank both so equal inputs give equal bytes
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        add_bytes(tar, ENTRY_POINT, _ENTRY_SOURCE.encode())
        add_bytes(tar, "requirements.txt", requirements_txt().encode())
        add_bytes(tar, "config.yaml", cfg.to_yaml().encode())
        for p in files:
            add_bytes(tar, str(PurePosixPath("threadsum", *p.relative_to(pkg).parts)), p.read_bytes())
    return dest


# ------------------------------------------------------------------------------ data to upload
def _data_plan(cfg: Config) -> tuple[str, Path, dict[str, str]]:
    """(channel, local path, extra hyperparameters) of the data the job needs."""
    from threadsum.data.prepared import PreparedDataError, open_prepared
    from threadsum.data.tokenizer_check import check_prepared_for_model

    prepared = Path(cfg.data.prepared_dir)
    try:
        open_prepared(prepared)
    except PreparedDataError:
        pass
    else:
        check_prepared_for_model(cfg)  # the job would train on ids from another vocabulary
        return container.CHANNEL_PREPARED, prepared, {}
    if cfg.data.source and Path(cfg.data.source).exists():
        src = Path(cfg.data.source)
        extra = {container.HP_RAW_NAME: src.name} if src.is_file() else {}
        return container.CHANNEL_RAW, src, extra
    raise LaunchValidationError(
        f"nothing to train on: '{prepared}' is not a prepared dataset and data.source "
        f"({cfg.data.source!r}) is not a local file or folder. Run `threadsum prepare --config <config>` "
        "first (recommended: the job then skips tokenization), or set data.source to the raw files"
    )


def _local_files(path: Path) -> list[tuple[Path, str]]:
    if path.is_file():
        return [(path, path.name)]
    return [(p, p.relative_to(path).as_posix()) for p in sorted(path.rglob("*")) if p.is_file()]


# ------------------------------------------------------------------------------ the request
def build_request(
    cfg: Config,
    *,
    job_name: str,
    image_uri: str,
    instance_type: str,
    instance_count: int,
    spot: bool,
    role: str,
    bucket: str,
    prefix: str,
    region: str,
    channel: str,
    extra_hps: dict[str, str],
    config_name: str = "config.yaml",
) -> dict[str, Any]:
    """The CreateTrainingJob request (the exact dict passed to boto3 and printed by --dry-run)."""
    base = f"s3://{bucket}/{prefix + '/' if prefix else ''}{job_name}"
    sm = cfg.sagemaker
    max_run = int(round(sm.max_run_hours * 3600))
    max_wait = int(round(sm.max_wait_hours * 3600))
    if max_run > MAX_RUNTIME_SECONDS:
        raise LaunchValidationError(f"sagemaker.max_run_hours={sm.max_run_hours} exceeds SageMaker's 28-day limit (672 hours)")
    if spot and max_wait < max_run:
        raise LaunchValidationError(
            f"spot jobs need sagemaker.max_wait_hours >= sagemaker.max_run_hours (got {sm.max_wait_hours} < {sm.max_run_hours})"
        )
    gpus = gpus_per_instance(instance_type)
    if gpus is None:
        distribution, nproc = "auto", "auto"  # unknown type: decided in the job from SM_NUM_GPUS
    else:
        distribution = "torchrun" if gpus * instance_count > 1 else "none"
        nproc = str(max(gpus, 1))
    minutes = sm.checkpoint_every_minutes
    if cfg.train.checkpoint_every_minutes > 0:
        minutes = min(minutes, cfg.train.checkpoint_every_minutes)

    # Hyperparameters are data: the toolkit hands them to the entry point through SM_HPS and argv
    # (an argument list, not a shell line), and the entry point reads SM_HPS only.
    hps = {
        "sagemaker_program": ENTRY_POINT,
        "sagemaker_submit_directory": f"{base}/code/{SOURCEDIR_NAME}",
        "sagemaker_region": region,
        "sagemaker_container_log_level": "20",
        "sagemaker_job_name": job_name,
        container.HP_CONFIG: config_name,
        container.HP_CHECKPOINT_MINUTES: f"{minutes:g}",
        container.HP_DISTRIBUTION: distribution,
        container.HP_NPROC: nproc,
        **extra_hps,
    }
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "RoleArn": role,
        "AlgorithmSpecification": {"TrainingImage": image_uri, "TrainingInputMode": "File"},
        "HyperParameters": hps,
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"{base}/data/{channel}/",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
        ],
        # SageMaker appends <job>/output/model.tar.gz to this path
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/{prefix}".rstrip("/")},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": instance_count,
            "VolumeSizeInGB": sm.volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": max_run},
        "CheckpointConfig": {"S3Uri": f"{base}/checkpoints/", "LocalPath": CHECKPOINT_LOCAL_PATH},
        "EnableManagedSpotTraining": bool(spot),
        "Environment": {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"},
        "Tags": [{"Key": "threadsum:recipe", "Value": cfg.name[:256] or "run"}],
    }
    if spot:
        request["StoppingCondition"]["MaxWaitTimeInSeconds"] = max_wait
    return request


# ------------------------------------------------------------------------------ AWS clients
def _boto3():
    from threadsum.deps import require

    require("boto3", "sagemaker")
    import boto3

    return boto3


def _session_region(region: Optional[str]) -> Optional[str]:
    if region:
        return region
    try:
        return _boto3().session.Session().region_name  # reads env/config files only; no network
    except Exception:
        return None


def _client(service: str, region: Optional[str]):
    # AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE> are honoured by botocore (used by the tests)
    return _boto3().client(service, region_name=region)


def _aws_errors(action: str) -> Callable:
    """Turn botocore errors into SageMakerError with a fix; messages never include credentials."""
    def wrap(fn):
        def inner(*args, **kwargs):
            from botocore.exceptions import (
                BotoCoreError,
                ClientError,
                NoCredentialsError,
            )

            try:
                return fn(*args, **kwargs)
            except NoCredentialsError:
                raise SageMakerError(
                    f"{action}: no AWS credentials found; configure them with `aws configure`, "
                    "AWS_PROFILE or an instance role"
                ) from None
            except ClientError as exc:
                err = exc.response.get("Error", {})
                raise SageMakerError(f"{action}: {err.get('Code', 'error')}: {err.get('Message', exc)}") from None
            except BotoCoreError as exc:
                raise SageMakerError(f"{action}: {exc}") from None
        inner.__name__, inner.__doc__ = fn.__name__, fn.__doc__
        return inner
    return wrap


# ------------------------------------------------------------------------------ launch
def launch(
    cfg: Config,
    *,
    instance_type: Optional[str] = None,
    instance_count: Optional[int] = None,
    spot: Optional[bool] = None,
    role: Optional[str] = None,
    s3_prefix: Optional[str] = None,
    region: Optional[str] = None,
    dry_run: bool = False,
    job_name: Optional[str] = None,
    config_path: Optional[str | Path] = None,
    log: TextIO = sys.stderr,
) -> dict[str, Any]:
    """Create a SageMaker training job that runs `threadsum train` with this config.

    Arguments left as None come from the ``sagemaker`` config section. With ``dry_run`` nothing is
    uploaded and no AWS API is called: the result holds the exact request that would be sent.
    Returns {"job_name", "request", "dry_run", "uploads": [{"local", "s3"}], "instance_source",
    and "arn" after a real launch}.
    """
    sm = cfg.sagemaker
    instance_source = "--instance-type"
    if instance_type is None:
        instance_type, instance_source = default_instance_type(cfg)
    validate_instance_type(instance_type)
    instance_count = sm.instance_count if instance_count is None else instance_count
    if instance_count < 1:
        raise LaunchValidationError(f"--instance-count must be >= 1 (got {instance_count})")
    spot = sm.spot if spot is None else spot
    role = validate_role(role or sm.role)
    bucket, prefix = parse_s3_uri(s3_prefix or sm.s3_prefix)
    region = validate_region(_session_region(region or sm.region))
    job_name = validate_job_name(job_name or default_job_name(cfg))
    image_uri = validate_image_uri(sm.image_uri or default_image_uri(region))
    channel, local_data, extra_hps = _data_plan(cfg)

    request = build_request(
        cfg, job_name=job_name, image_uri=image_uri, instance_type=instance_type,
        instance_count=instance_count, spot=spot, role=role, bucket=bucket, prefix=prefix,
        region=region, channel=channel, extra_hps=extra_hps,
    )
    if config_path is not None:
        request["Tags"].append({"Key": "threadsum:config", "Value": Path(config_path).name[:256]})
    key_base = f"{prefix + '/' if prefix else ''}{job_name}"
    uploads = [
        {"local": str(local_data), "s3": f"s3://{bucket}/{key_base}/data/{channel}/"},
        {"local": f"<{SOURCEDIR_NAME} built from {_package_dir()}>", "s3": request["HyperParameters"]["sagemaker_submit_directory"]},
    ]
    result: dict[str, Any] = {
        "job_name": job_name, "request": request, "dry_run": dry_run,
        "uploads": uploads, "instance_source": instance_source,
    }
    if dry_run:
        return result

    result["arn"] = _upload_and_create(request, bucket, key_base, channel, local_data, cfg, region, log)
    return result


@_aws_errors("launch")
def _upload_and_create(request, bucket, key_base, channel, local_data, cfg, region, log) -> Optional[str]:
    s3 = _client("s3", region)
    files = _local_files(local_data)
    total = sum(p.stat().st_size for p, _ in files)
    print(f"uploading {len(files)} files ({total / 1e6:.1f} MB) from {local_data} to s3://{bucket}/{key_base}/data/{channel}/", file=log)
    for path, rel in files:
        s3.upload_file(str(path), bucket, f"{key_base}/data/{channel}/{rel}")
    with tempfile.TemporaryDirectory() as tmp:
        tarball = build_sourcedir(cfg, Path(tmp) / SOURCEDIR_NAME)
        print(f"uploading {SOURCEDIR_NAME} ({tarball.stat().st_size / 1e3:.0f} kB)", file=log)
        s3.upload_file(str(tarball), bucket, f"{key_base}/code/{SOURCEDIR_NAME}")
    sagemaker = _client("sagemaker", region)
    response = sagemaker.create_training_job(**request)
    print(f"created training job {request['TrainingJobName']}", file=log)
    return response.get("TrainingJobArn")


# ------------------------------------------------------------------------------ watch, stop, fetch
def _job_client(region: Optional[str], client):
    return client if client is not None else _client("sagemaker", _session_region(region))


@_aws_errors("status")
def status(job: str, *, region: Optional[str] = None, client=None) -> dict[str, Any]:
    """A summary of a training job: state, timings, spot savings, where its model is."""
    validate_job_name(job)
    d = _job_client(region, client).describe_training_job(TrainingJobName=job)
    training_s = d.get("TrainingTimeInSeconds")
    billable_s = d.get("BillableTimeInSeconds")
    savings = None
    if d.get("EnableManagedSpotTraining") and training_s and billable_s is not None:
        savings = round(100.0 * (1 - billable_s / training_s), 1)
    transitions = d.get("SecondaryStatusTransitions") or []
    return {
        "job_name": d.get("TrainingJobName", job),
        "status": d.get("TrainingJobStatus"),
        "secondary_status": d.get("SecondaryStatus"),
        "message": transitions[-1].get("StatusMessage") if transitions else None,
        "failure_reason": d.get("FailureReason"),
        "instance_type": (d.get("ResourceConfig") or {}).get("InstanceType"),
        "instance_count": (d.get("ResourceConfig") or {}).get("InstanceCount"),
        "spot": bool(d.get("EnableManagedSpotTraining")),
        "training_seconds": training_s,
        "billable_seconds": billable_s,
        "spot_savings_percent": savings,
        "created": str(d.get("CreationTime")) if d.get("CreationTime") else None,
        "model_artifacts": (d.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
        "checkpoints": (d.get("CheckpointConfig") or {}).get("S3Uri"),
    }


@_aws_errors("stop")
def stop(job: str, *, region: Optional[str] = None, client=None) -> dict[str, Any]:
    """Ask SageMaker to stop a job (it saves /opt/ml/model and uploads it, then stops)."""
    validate_job_name(job)
    _job_client(region, client).stop_training_job(TrainingJobName=job)
    return {"job_name": job, "stop_requested": True}


def iter_log_events(
    job: str,
    *,
    follow: bool = False,
    region: Optional[str] = None,
    poll_seconds: float = 5.0,
    logs_client=None,
    sagemaker_client=None,
) -> Iterator[tuple[str, str]]:
    """(stream, message) of the job's CloudWatch log streams (one per host); with ``follow``,
    keep polling until the job has ended and no new lines arrive."""
    validate_job_name(job)
    reg = _session_region(region)
    logs = logs_client if logs_client is not None else _client("logs", reg)
    sm = sagemaker_client if sagemaker_client is not None else (_client("sagemaker", reg) if follow else None)
    tokens: dict[str, Optional[str]] = {}
    while True:
        got = 0
        try:
            streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job}/")["logStreams"]
        except logs.exceptions.ResourceNotFoundException:
            streams = []  # the group appears with the first job that logs in this region
        for s in sorted(streams, key=lambda s: s["logStreamName"]):
            name = s["logStreamName"]
            while True:
                kwargs = {"logGroupName": LOG_GROUP, "logStreamName": name, "startFromHead": True}
                if tokens.get(name):
                    kwargs["nextToken"] = tokens[name]
                page = logs.get_log_events(**kwargs)
                for e in page.get("events", []):
                    got += 1
                    yield name, e.get("message", "")
                nxt = page.get("nextForwardToken")
                done = nxt == tokens.get(name) or not page.get("events")
                tokens[name] = nxt
                if done:
                    break
        if not follow:
            return
        state = sm.describe_training_job(TrainingJobName=job)["TrainingJobStatus"]
        if state in TERMINAL_STATES and got == 0:
            return
        time.sleep(poll_seconds)


@_aws_errors("logs")
def logs(job: str, *, follow: bool = False, region: Optional[str] = None, out: TextIO = sys.stdout,
         poll_seconds: float = 5.0, **clients) -> int:
    """Print the job's log lines ('[host] message'); returns how many were printed."""
    n = 0
    for stream, message in iter_log_events(job, follow=follow, region=region, poll_seconds=poll_seconds, **clients):
        host = stream.split("/", 1)[1] if "/" in stream else stream
        out.write(f"[{host}] {message.rstrip()}\n")
        out.flush()
        n += 1
    return n


def safe_extract(archive: str | Path, dest: str | Path) -> list[str]:
    """Unpack a tar(.gz) into dest, refusing absolute paths, '..', links and device files."""
    dest = Path(dest).resolve()
    names: list[str] = []
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            p = PurePosixPath(m.name)
            if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                kind = "link" if (m.issym() or m.islnk()) else "path"
                raise SageMakerError(f"refusing to unpack '{m.name}' from {archive}: unsafe {kind} in a model archive")
            if not (dest / m.name).resolve().is_relative_to(dest):
                raise SageMakerError(f"refusing to unpack '{m.name}' from {archive}: it points outside {dest}")
            if m.isfile():
                names.append(p.as_posix())
        dest.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Python < 3.10.12: the checks above are the whole defence
            tar.extractall(dest, members=members)
    return names


@_aws_errors("fetch")
def fetch(job: str, to_dir: str | Path, *, region: Optional[str] = None, client=None, s3_client=None) -> dict[str, Any]:
    """Download the job's model.tar.gz and unpack it into to_dir (a folder `summarize`/`serve` load)."""
    validate_job_name(job)
    to_dir = Path(to_dir)
    if to_dir.exists() and any(to_dir.iterdir()):
        raise SageMakerError(f"'{to_dir}' exists and is not empty; pass an empty or new folder to --to")
    reg = _session_region(region)
    d = _job_client(reg, client).describe_training_job(TrainingJobName=job)
    state = d.get("TrainingJobStatus")
    uri = (d.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if state != "Completed" and not (state == "Stopped" and uri):
        reason = f" ({d['FailureReason']})" if d.get("FailureReason") else ""
        raise SageMakerError(f"job '{job}' is {state}{reason}; a model can be fetched once it has Completed")
    if not uri:
        raise SageMakerError(f"job '{job}' reports no model artifacts")
    bucket, key = parse_s3_uri(uri, "ModelArtifacts")
    s3 = s3_client if s3_client is not None else _client("s3", reg)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "model.tar.gz"
        s3.download_file(bucket, key, str(archive))
        staging = Path(tmp) / "unpacked"
        files = safe_extract(archive, staging)
        to_dir.mkdir(parents=True, exist_ok=True)
        for child in staging.iterdir():
            shutil.move(str(child), str(to_dir / child.name))
    model_dir = to_dir
    if not (to_dir / "config.json").is_file():
        inner = [p.parent for p in to_dir.glob("*/config.json")]
        if len(inner) == 1:
            model_dir = inner[0]
    return {
        "job_name": job, "model_artifacts": uri, "model_dir": str(model_dir), "files": len(files),
        "loadable": (model_dir / "config.json").is_file(),
    }


def redact(text: str, environ: Optional[dict[str, str]] = None) -> str:
    """Remove any AWS secret values present in the environment from text (defence in depth)."""
    environ = os.environ if environ is None else environ
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN"):
        value = environ.get(key)
        if value and len(value) >= 8:
            text = text.replace(value, "****")
    return text
