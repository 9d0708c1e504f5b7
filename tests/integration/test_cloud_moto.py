"""launch / status / logs / fetch against moto's server mode: real HTTP on 127.0.0.1, real boto3
(the ``moto_server`` and ``aws`` fixtures of conftest.py)."""
from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from threadsum.cloud import sagemaker as sm  # noqa: E402
from threadsum.config import config_from_dict  # noqa: E402

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "threadsum-test"


@pytest.fixture
def prepared(tmp_path) -> Path:
    root = tmp_path / "prepared"
    for sub in ("tokenizer", "tokenized/train", "threads"):
        (root / sub).mkdir(parents=True)
    (root / "tokenizer" / "tokenizer.json").write_text('{"model": {}}')
    # prepared for the configs' default model; launch checks the recorded tokenizer (data/tokenizer_check.py)
    (root / "prepare.json").write_text(json.dumps({"tokenizer": {"source": "facebook/bart-large"}}))
    (root / "tokenized" / "train" / "data-00000-of-00001.arrow").write_bytes(bytes(range(256)) * 4)
    (root / "threads" / "train.jsonl").write_text('{"thread_id": "t1"}\n')
    return root


def _keys(s3, prefix: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}


def test_launch_uploads_and_creates_the_job(aws, prepared):
    cfg = config_from_dict({"name": "it", "data": {"prepared_dir": str(prepared)},
                            "sagemaker": {"max_run_hours": 2, "max_wait_hours": 4}})
    res = sm.launch(cfg, instance_type="ml.g5.12xlarge", instance_count=2, spot=True, role=ROLE,
                    s3_prefix=f"s3://{BUCKET}/runs", region=REGION, dry_run=False, job_name="it-launch",
                    config_path="configs/it.yaml", log=io.StringIO())
    assert res["arn"].endswith(":training-job/it-launch")

    keys = _keys(aws, "runs/it-launch/")
    assert {
        "runs/it-launch/data/prepared/tokenizer/tokenizer.json",
        "runs/it-launch/data/prepared/tokenized/train/data-00000-of-00001.arrow",
        "runs/it-launch/data/prepared/threads/train.jsonl",
        "runs/it-launch/code/sourcedir.tar.gz",
    } <= keys
    arrow = aws.get_object(Bucket=BUCKET, Key="runs/it-launch/data/prepared/tokenized/train/data-00000-of-00001.arrow")
    assert arrow["Body"].read() == bytes(range(256)) * 4
    bundle = aws.get_object(Bucket=BUCKET, Key="runs/it-launch/code/sourcedir.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        assert "name: it" in tar.extractfile("config.yaml").read().decode()
        assert "threadsum/cloud/container.py" in tar.getnames()

    job = boto3.client("sagemaker", region_name=REGION).describe_training_job(TrainingJobName="it-launch")
    assert job["RoleArn"] == ROLE
    assert job["AlgorithmSpecification"]["TrainingImage"] == sm.default_image_uri(REGION)
    assert job["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge"
    assert job["ResourceConfig"]["InstanceCount"] == 2
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert job["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/runs/it-launch/checkpoints/", "LocalPath": "/opt/ml/checkpoints"}
    hps = job["HyperParameters"]
    assert hps["sagemaker_submit_directory"] == f"s3://{BUCKET}/runs/it-launch/code/sourcedir.tar.gz"
    assert hps["sagemaker_program"] == "threadsum_entry.py"
    assert hps["distribution"] == "torchrun" and hps["nproc_per_node"] == "4"
    assert job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/runs/it-launch/data/prepared/"


def test_dry_run_calls_nothing(aws, prepared):
    cfg = config_from_dict({"data": {"prepared_dir": str(prepared)}})
    sm.launch(cfg, instance_type="ml.g5.xlarge", role=ROLE, s3_prefix=f"s3://{BUCKET}/dry", region=REGION,
              dry_run=True, job_name="it-dry")
    assert _keys(aws, "dry/") == set()
    with pytest.raises(Exception):
        boto3.client("sagemaker", region_name=REGION).describe_training_job(TrainingJobName="it-dry")


def _model_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {"config.json": b'{"model_type": "bart"}', "tokenizer.json": b"{}",
                           "config.yaml": b"name: it\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _create_job(name: str) -> dict:
    client = boto3.client("sagemaker", region_name=REGION)
    client.create_training_job(
        TrainingJobName=name, RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": sm.default_image_uri(REGION), "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/out"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )
    return client.describe_training_job(TrainingJobName=name)


def test_status_and_fetch_of_a_completed_job(aws, tmp_path):
    job = _create_job("it-done")  # moto reports jobs as Completed at once
    uri = job["ModelArtifacts"]["S3ModelArtifacts"]
    assert uri == f"s3://{BUCKET}/out/it-done/output/model.tar.gz"
    aws.put_object(Bucket=BUCKET, Key="out/it-done/output/model.tar.gz", Body=_model_archive())

    info = sm.status("it-done", region=REGION)
    assert info["status"] == "Completed" and info["instance_type"] == "ml.g5.xlarge"
    assert info["model_artifacts"] == uri

    out = sm.fetch("it-done", tmp_path / "model", region=REGION)
    assert out["loadable"] and out["files"] == 3 and out["model_dir"] == str(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text()) == {"model_type": "bart"}


def test_fetch_refuses_a_non_empty_target(aws, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("mine")
    with pytest.raises(sm.SageMakerError, match="not empty"):
        sm.fetch("it-done", tmp_path / "model", region=REGION)


def test_status_of_an_unknown_job_is_a_clear_error(aws):
    with pytest.raises(sm.SageMakerError, match="status: ValidationException"):
        sm.status("no-such-job", region=REGION)


def test_logs_reads_every_host_stream(aws):
    _create_job("it-logs")
    logs = boto3.client("logs", region_name=REGION)
    try:
        logs.create_log_group(logGroupName=sm.LOG_GROUP)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    now_ms = int(time.time() * 1000)  # CloudWatch drops events older than 14 days
    for host, lines in {"algo-1": ["step 10 loss 5.1", "step 20 loss 4.2"], "algo-2": ["worker ready"]}.items():
        stream = f"it-logs/{host}-1700000000"
        logs.create_log_stream(logGroupName=sm.LOG_GROUP, logStreamName=stream)
        logs.put_log_events(logGroupName=sm.LOG_GROUP, logStreamName=stream,
                            logEvents=[{"timestamp": now_ms + i, "message": m} for i, m in enumerate(lines)])
    out = io.StringIO()
    # follow on a finished job prints everything once, then returns
    n = sm.logs("it-logs", follow=True, region=REGION, out=out, poll_seconds=0.05)
    assert n == 3
    text = out.getvalue()
    assert "[algo-1-1700000000] step 10 loss 5.1" in text and "[algo-2-1700000000] worker ready" in text
    assert text.index("step 10") < text.index("step 20")


def test_logs_before_any_job_logged(aws):
    # a region where no job has logged yet has no log group at all: that is "no lines", not an error
    assert sm.logs("it-quiet", follow=False, region="eu-west-3", out=io.StringIO()) == 0
