"""Launcher pieces that need no AWS endpoint: validation, the request, the bundle, safe unpacking, stop."""
from __future__ import annotations

import io
import json
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from threadsum.cloud import sagemaker as sm
from threadsum.cloud.cli import app as sagemaker_app
from threadsum.config import ConfigError, config_from_dict, load_config

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
FAKE_KEY_ID = "AKIAFAKEKEYID0000001"
FAKE_SECRET = "fake/Secret+Value/DoNotPrint0000000000001"
FAKE_TOKEN = "FakeSessionTokenValueThatMustNeverAppear0001"


@pytest.fixture
def fake_creds(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def prepared(tmp_path) -> Path:
    """A folder that satisfies the prepared-data contract's layout check."""
    root = tmp_path / "prepared"
    for sub in ("tokenizer", "tokenized/train", "threads"):
        (root / sub).mkdir(parents=True)
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    # prepared for the configs' default model; launch checks the recorded tokenizer (data/tokenizer_check.py)
    (root / "prepare.json").write_text(json.dumps({"tokenizer": {"source": "facebook/bart-large"}}))
    (root / "tokenized" / "train" / "data-00000-of-00001.arrow").write_bytes(b"\0" * 128)
    (root / "threads" / "train.jsonl").write_text('{"thread_id": "t1"}\n')
    return root


def _cfg(prepared: Path, **sagemaker):
    return config_from_dict({"name": "bart-large", "data": {"prepared_dir": str(prepared)}, "sagemaker": sagemaker})


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("name", ["a", "threadsum-bart-2025", "A1-b2--c3", "x" * 63])
def test_valid_job_names(name):
    assert sm.validate_job_name(name) == name


@pytest.mark.parametrize("name", ["", "-lead", "trail-", "has_underscore", "dots.no", "x" * 64, "sp ace", "a;rm -rf"])
def test_invalid_job_names(name):
    with pytest.raises(sm.LaunchValidationError, match="1-63 letters"):
        sm.validate_job_name(name)


@pytest.mark.parametrize("role", [ROLE, "arn:aws:iam::123456789012:role/service-role/AmazonSageMaker-ExecutionRole-2024",
                                  "arn:aws-cn:iam::123456789012:role/r"])
def test_valid_roles(role):
    assert sm.validate_role(role) == role


@pytest.mark.parametrize("role", ["SageMakerRole", "arn:aws:iam::12345:role/r", "arn:aws:iam::123456789012:user/bob",
                                  "arn:aws:s3:::bucket"])
def test_invalid_roles(role):
    with pytest.raises(sm.LaunchValidationError, match="IAM role ARN"):
        sm.validate_role(role)


def test_missing_role_names_the_option():
    with pytest.raises(sm.LaunchValidationError, match="--role"):
        sm.validate_role(None)


@pytest.mark.parametrize("uri,expected", [
    ("s3://my-bucket/threadsum", ("my-bucket", "threadsum")),
    ("s3://my-bucket/a/b/", ("my-bucket", "a/b")),
    ("s3://my.bucket.name", ("my.bucket.name", "")),
])
def test_s3_uris(uri, expected):
    assert sm.parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["my-bucket/x", "s3://My_Bucket/x", "s3://ab", "s3://a..b/x", "s3://192.168.1.1/x",
                                 "https://bucket/x", "s3://bucket/a b", "s3://bucket/a//b"])
def test_bad_s3_uris(uri):
    with pytest.raises(sm.LaunchValidationError, match="not a valid S3 URI"):
        sm.parse_s3_uri(uri)


@pytest.mark.parametrize("itype", ["ml.g5.2xlarge", "ml.p4d.24xlarge", "ml.g6e.xlarge", "ml.m5.large", "ml.trn1.32xlarge"])
def test_instance_types(itype):
    assert sm.validate_instance_type(itype) == itype


@pytest.mark.parametrize("itype", ["g5.2xlarge", "ml.g5", "ml.g5.huge", "ML.G5.2XLARGE", "ml.g5.2xlarge; echo"])
def test_bad_instance_types(itype):
    with pytest.raises(sm.LaunchValidationError, match="ml.g5.2xlarge"):
        sm.validate_instance_type(itype)


def test_default_job_name_is_valid_and_bounded():
    cfg = config_from_dict({"name": "a_very_long_recipe_name_" * 4})
    name = sm.default_job_name(cfg, datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert name.endswith("-20250102-030405") and len(name) <= 63
    sm.validate_job_name(name)


def test_spot_wait_shorter_than_run_is_a_config_error():
    with pytest.raises(ConfigError, match="max_wait_hours"):
        config_from_dict({"sagemaker": {"spot": True, "max_run_hours": 10, "max_wait_hours": 5}})


def test_image_uri_per_region():
    assert sm.default_image_uri("us-east-1").startswith("763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:")
    assert sm.default_image_uri("af-south-1").startswith("626614931356.dkr.ecr.af-south-1.amazonaws.com/")
    assert ".amazonaws.com.cn/" in sm.default_image_uri("cn-north-1")


# ------------------------------------------------------------------------------ the request
def _dry(cfg, **kw):
    args = dict(role=ROLE, s3_prefix="s3://my-bucket/runs", region="us-west-2", dry_run=True, job_name="job-1")
    args.update(kw)
    return sm.launch(cfg, **args)


def test_dry_run_request_single_gpu(prepared, fake_creds):
    res = _dry(_cfg(prepared), instance_type="ml.g5.2xlarge")
    req = res["request"]
    assert res["dry_run"] and res["job_name"] == "job-1"
    assert req["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert req["AlgorithmSpecification"]["TrainingImage"].startswith("763104351884.dkr.ecr.us-west-2.amazonaws.com/huggingface-pytorch-training:")
    assert req["EnableManagedSpotTraining"] is False and "MaxWaitTimeInSeconds" not in req["StoppingCondition"]
    assert req["CheckpointConfig"] == {"S3Uri": "s3://my-bucket/runs/job-1/checkpoints/", "LocalPath": "/opt/ml/checkpoints"}
    hps = req["HyperParameters"]
    assert hps["sagemaker_program"] == "threadsum_entry.py"
    assert hps["sagemaker_submit_directory"] == "s3://my-bucket/runs/job-1/code/sourcedir.tar.gz"
    assert hps["distribution"] == "none" and hps["config"] == "config.yaml"
    assert all(isinstance(v, str) for v in hps.values())  # the API accepts only strings
    assert req["InputDataConfig"][0]["ChannelName"] == "prepared"
    assert req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://my-bucket/runs/job-1/data/prepared/"
    assert req["OutputDataConfig"]["S3OutputPath"] == "s3://my-bucket/runs"
    assert res["uploads"][0]["local"] == str(prepared)


def test_dry_run_spot_multi_instance(prepared, fake_creds):
    cfg = _cfg(prepared, max_run_hours=5, max_wait_hours=12, checkpoint_every_minutes=7)
    req = _dry(cfg, instance_type="ml.g5.12xlarge", instance_count=2, spot=True)["request"]
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 5 * 3600, "MaxWaitTimeInSeconds": 12 * 3600}
    assert req["HyperParameters"]["distribution"] == "torchrun"
    assert req["HyperParameters"]["nproc_per_node"] == "4"
    assert req["HyperParameters"]["checkpoint_every_minutes"] == "7"


def test_unknown_instance_type_defers_distribution_to_the_job(prepared, fake_creds):
    hps = _dry(_cfg(prepared), instance_type="ml.p6.48xlarge")["request"]["HyperParameters"]
    assert hps["distribution"] == "auto" and hps["nproc_per_node"] == "auto"


def test_instance_type_from_config_then_default(prepared, fake_creds):
    res = _dry(_cfg(prepared, instance_type="ml.g6e.xlarge"))
    assert res["request"]["ResourceConfig"]["InstanceType"] == "ml.g6e.xlarge"
    assert res["instance_source"] == "sagemaker.instance_type"
    res = _dry(_cfg(prepared))
    assert res["request"]["ResourceConfig"]["InstanceType"]  # planner pick or the documented default
    assert res["instance_source"] == "default" or res["instance_source"].startswith("planner")
    if res["instance_source"] == "default":
        assert res["request"]["ResourceConfig"]["InstanceType"] == sm.DEFAULT_INSTANCE_TYPE


def test_image_override(prepared, fake_creds):
    image = "123456789012.dkr.ecr.us-west-2.amazonaws.com/my-image:1.0"
    req = _dry(_cfg(prepared, image_uri=image), instance_type="ml.g5.xlarge")["request"]
    assert req["AlgorithmSpecification"]["TrainingImage"] == image
    with pytest.raises(sm.LaunchValidationError, match="image_uri"):
        _dry(_cfg(prepared, image_uri="not an image"), instance_type="ml.g5.xlarge")


def test_checkpoint_interval_takes_the_shorter_of_config_and_sagemaker(prepared, fake_creds):
    cfg = config_from_dict({"data": {"prepared_dir": str(prepared)}, "train": {"checkpoint_every_minutes": 3}})
    assert _dry(cfg, instance_type="ml.g5.xlarge")["request"]["HyperParameters"]["checkpoint_every_minutes"] == "3"


def test_raw_source_when_nothing_prepared(tmp_path, fake_creds):
    src = tmp_path / "threads.jsonl"
    src.write_text('{"thread_id": "1"}\n')
    cfg = config_from_dict({"data": {"prepared_dir": str(tmp_path / "none"), "source": str(src)}})
    req = _dry(cfg, instance_type="ml.g5.xlarge")["request"]
    assert req["InputDataConfig"][0]["ChannelName"] == "raw"
    assert req["HyperParameters"]["raw_source_name"] == "threads.jsonl"


def test_no_data_is_explained(tmp_path, fake_creds):
    cfg = config_from_dict({"data": {"prepared_dir": str(tmp_path / "none"), "source": None}})
    with pytest.raises(sm.LaunchValidationError, match="threadsum prepare"):
        _dry(cfg, instance_type="ml.g5.xlarge")


def test_spot_wait_checked_for_cli_flag(prepared, fake_creds):
    cfg = _cfg(prepared, max_run_hours=10, max_wait_hours=5)  # valid config (spot off) ...
    with pytest.raises(sm.LaunchValidationError, match="max_wait_hours"):
        _dry(cfg, instance_type="ml.g5.xlarge", spot=True)  # ... but --spot needs wait >= run


def test_region_required(prepared, monkeypatch, tmp_path):
    for key in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(sm.LaunchValidationError, match="--region"):
        _dry(_cfg(prepared), instance_type="ml.g5.xlarge", region=None)


def test_region_from_environment(prepared, fake_creds):
    req = _dry(_cfg(prepared), instance_type="ml.g5.xlarge", region=None)["request"]
    assert req["HyperParameters"]["sagemaker_region"] == "eu-west-1"


def test_cli_dry_run_prints_request_json_without_credentials(prepared, fake_creds, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"name: demo\ndata:\n  prepared_dir: {prepared}\n")
    res = CliRunner().invoke(sagemaker_app, [
        "launch", "--config", str(config), "--instance-type", "ml.g5.2xlarge", "--spot", "--role", ROLE,
        "--s3-prefix", "s3://my-bucket/runs", "--region", "us-east-1", "--dry-run", "--job-name", "demo-job",
        "train.lr=1e-4",
    ])
    assert res.exit_code == 0, res.output
    request = json.loads(res.stdout)
    assert request["TrainingJobName"] == "demo-job" and request["EnableManagedSpotTraining"] is True
    everything = res.output + res.stderr
    for secret in (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN):
        assert secret not in everything


def test_cli_bad_input_exits_2_with_message(prepared, fake_creds, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  prepared_dir: {prepared}\n")
    res = CliRunner().invoke(sagemaker_app, ["launch", "-c", str(config), "--role", "nope", "--s3-prefix", "s3://b-1/x",
                                             "--region", "us-east-1", "--dry-run"])
    assert res.exit_code == 2 and "IAM role ARN" in res.stderr


def test_redact_removes_secrets():
    env = {"AWS_SECRET_ACCESS_KEY": FAKE_SECRET}
    assert FAKE_SECRET not in sm.redact(f"oops {FAKE_SECRET}", env)


# ------------------------------------------------------------------------------ the bundle
def test_sourcedir_contents_and_reproducible(tmp_path, prepared):
    cfg = load_config(None, ["name=bundle", "train.lr=0.001"])
    a = sm.build_sourcedir(cfg, tmp_path / "a.tar.gz")
    b = sm.build_sourcedir(cfg, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        names = set(tar.getnames())
        assert {"threadsum_entry.py", "requirements.txt", "config.yaml"} <= names
        assert "threadsum/cloud/container.py" in names and "threadsum/config.py" in names
        assert "threadsum/resources/sagemaker_images.json" in names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        shipped = tar.extractfile("config.yaml").read().decode()
        reqs = tar.extractfile("requirements.txt").read().decode().split()
        entry = tar.extractfile("threadsum_entry.py").read().decode()
    assert "name: bundle" in shipped and "lr: 0.001" in shipped
    assert "transformers>=" in " ".join(reqs) and not any(r.startswith("torch") for r in reqs)
    assert "boto3" not in " ".join(reqs)  # the job never calls AWS itself
    assert "threadsum.cloud.container import main" in entry


# ------------------------------------------------------------------------------ safe unpacking
def _tar(path: Path, members: list[tarfile.TarInfo], payload: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if m.isfile():
                m.size = len(payload)
                tar.addfile(m, io.BytesIO(payload))
            else:
                tar.addfile(m)
    return path


@pytest.mark.parametrize("make", [
    lambda: tarfile.TarInfo("../evil.txt"),
    lambda: tarfile.TarInfo("/etc/evil.txt"),
    lambda: tarfile.TarInfo("a/../../evil.txt"),
])
def test_safe_extract_refuses_traversal(tmp_path, make):
    archive = _tar(tmp_path / "bad.tar.gz", [make()])
    with pytest.raises(sm.SageMakerError, match="refusing"):
        sm.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_refuses_links(tmp_path):
    link = tarfile.TarInfo("config.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _tar(tmp_path / "bad.tar.gz", [link])
    with pytest.raises(sm.SageMakerError, match="link"):
        sm.safe_extract(archive, tmp_path / "out")


def test_safe_extract_unpacks_a_model(tmp_path):
    members = [tarfile.TarInfo("config.json"), tarfile.TarInfo("tokenizer/tokenizer.json")]
    archive = _tar(tmp_path / "ok.tar.gz", members, b"{}")
    names = sm.safe_extract(archive, tmp_path / "out")
    assert sorted(names) == ["config.json", "tokenizer/tokenizer.json"]
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").read_text() == "{}"


# ------------------------------------------------------------------------------ stop (moto lacks StopTrainingJob)
def test_stop_sends_stop_training_job(fake_creds):
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("sagemaker", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response("stop_training_job", {}, {"TrainingJobName": "job-1"})
        assert sm.stop("job-1", client=client) == {"job_name": "job-1", "stop_requested": True}
        stub.assert_no_pending_responses()


def test_stop_reports_aws_errors(fake_creds):
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("sagemaker", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_client_error("stop_training_job", "ValidationException", "Requested resource not found.")
        with pytest.raises(sm.SageMakerError, match="stop: ValidationException: Requested resource not found"):
            sm.stop("job-2", client=client)


def test_stop_validates_name_before_calling():
    with pytest.raises(sm.LaunchValidationError):
        sm.stop("bad name; rm -rf /")
