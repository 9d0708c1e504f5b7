"""package / deploy / invoke / undeploy / transform: the archive layout, the requests checked
against botocore's service model, and the calls against moto's server (real HTTP, real boto3)."""
from __future__ import annotations

import json
import tarfile

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from botocore.validate import ParamValidator  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from threadsum.cli import app  # noqa: E402
from threadsum.cloud import deploy  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir  # noqa: E402

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "threadsum-deploy-test"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("deploy-model"))


@pytest.fixture(scope="module")
def moto_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url, monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                 "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto_url}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3 = boto3.client("s3", region_name=REGION)
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET)
    return s3


def _valid(service: str, operation: str, request: dict) -> None:
    model = boto3.client(service, region_name=REGION).meta.service_model.operation_model(operation)
    report = ParamValidator().validate(request, model.input_shape)
    assert not report.has_errors(), report.generate_report()


def test_package_layout(model_dir, tmp_path):
    info = deploy.package(model_dir, tmp_path / "model.tar.gz")
    with tarfile.open(info["archive"]) as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = set(members)
        req = tar.extractfile("code/requirements.txt").read().decode()
        entry = tar.extractfile("code/inference.py").read().decode()
    model_files = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
    assert model_files <= names and "config.json" in names and "tokenizer.json" in names
    assert {"code/inference.py", "code/serve", "code/requirements.txt", "code/threadsum/cli.py",
            "code/threadsum/serve/sagemaker.py", "code/threadsum/resources/sagemaker_images.json"} <= names
    assert members["code/serve"].mode & 0o111  # executable
    assert "fastapi" in req and "uvicorn" in req and "torch\n" not in req and not req.startswith("torch")
    assert "model_fn, transform_fn" in entry
    assert not any("__pycache__" in n for n in names)
    assert info["files"] == len(names)


def test_package_refuses_a_folder_without_a_model(tmp_path):
    r = CliRunner().invoke(app, ["sagemaker", "package", str(tmp_path), "--out", str(tmp_path / "m.tar.gz")])
    assert r.exit_code == 2 and "not a saved model" in r.output


@pytest.mark.parametrize("extra, fix", [
    (["--role", "admin"], "not an IAM role ARN"),
    (["--region", "mars-1"], "not an AWS region name"),
    (["--instance-type", "g5.xlarge"], "not a SageMaker instance type"),
    (["--serverless", "--memory-mb", "1500"], "not a serverless memory size"),
    (["--async"], "--async needs --output-s3"),
    (["--image", "nope"], "not an image URI"),
])
def test_deploy_bad_values_exit_2(model_dir, extra, fix):
    base = {"--role": ROLE, "--region": REGION}
    args = ["sagemaker", "deploy", str(model_dir), "--name", "tsum", "--s3-prefix", f"s3://{BUCKET}/p", "--dry-run"]
    for k, v in base.items():
        if k not in extra:
            args += [k, v]
    r = CliRunner().invoke(app, args + extra)
    assert r.exit_code == 2, r.output
    assert fix in r.output


def _dry(args) -> list[dict]:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    text, out, depth, cur = r.stdout, [], 0, ""
    for line in text.splitlines(keepends=True):  # concatenated pretty-printed JSON objects
        cur += line
        if line.rstrip() == "}":
            out.append(json.loads(cur))
            cur = ""
    return out


def test_dry_run_requests_match_the_service_model(model_dir):
    common = ["--name", "tsum-demo", "--role", ROLE, "--s3-prefix", f"s3://{BUCKET}/threadsum", "--region", REGION,
              "--dry-run"]
    for mode in ([], ["--serverless", "--memory-mb", "4096", "--max-concurrency", "4"],
                 ["--async", "--output-s3", f"s3://{BUCKET}/async-out"]):
        calls = _dry(["sagemaker", "deploy", str(model_dir), *common, *mode])
        assert [c["operation"] for c in calls] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
        for c in calls:
            _valid("sagemaker", c["operation"], c["request"])
        model, config = calls[0]["request"], calls[1]["request"]
        assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://{BUCKET}/threadsum/tsum-demo/model.tar.gz"
        variant = config["ProductionVariants"][0]
        if "--serverless" in mode:
            assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 4}
            assert "-cpu-" in model["PrimaryContainer"]["Image"]
        else:
            assert variant["InstanceType"] == "ml.g5.xlarge" and "-gpu-" in model["PrimaryContainer"]["Image"]
        assert ("AsyncInferenceConfig" in config) == ("--async" in mode)
    calls = _dry(["sagemaker", "transform", "tsum-demo", "--input-s3", f"s3://{BUCKET}/in/",
                  "--output-s3", f"s3://{BUCKET}/out", "--region", REGION, "--dry-run"])
    _valid("sagemaker", "CreateTransformJob", calls[0]["request"])
    assert calls[0]["request"]["TransformInput"]["SplitType"] == "Line"
    for op, req in deploy.undeploy("tsum-demo", region=REGION, dry_run=True)["requests"]:
        _valid("sagemaker", op, req)
    _valid("sagemaker-runtime", "InvokeEndpoint",
           {**deploy.invoke("tsum-demo", b"{}", region=REGION, dry_run=True)["request"], "Body": b"{}"})


MOTO_INSTANCE = "ml.g4dn.xlarge"  # moto 5.2.5's endpoint instance list predates ml.g5


def test_deploy_invoke_transform_undeploy_on_moto(aws, model_dir, tmp_path):
    result = deploy.deploy(model_dir, name="tsum-moto", role=ROLE, s3_prefix=f"s3://{BUCKET}/threadsum",
                           region=REGION, instance_type=MOTO_INSTANCE)
    assert result["status"] == "InService"
    head = aws.head_object(Bucket=BUCKET, Key="threadsum/tsum-moto/model.tar.gz")
    assert head["ContentLength"] > 0
    sm = boto3.client("sagemaker", region_name=REGION)
    assert sm.describe_model(ModelName="tsum-moto")["PrimaryContainer"]["ModelDataUrl"].endswith("model.tar.gz")
    assert sm.describe_endpoint_config(EndpointConfigName="tsum-moto")["ProductionVariants"][0]["InstanceType"] == MOTO_INSTANCE
    # moto answers InvokeEndpoint with canned data: this checks the call, not the container
    got = deploy.invoke("tsum-moto", b'{"text": "hello"}', region=REGION)
    assert got["body"]

    aws.put_object(Bucket=BUCKET, Key="in/a.jsonl", Body=b'{"text": "a"}\n')
    # moto completes transform jobs at once and writes no output; place one so the fetch is exercised
    aws.put_object(Bucket=BUCKET, Key="out/a.jsonl.out", Body=b'{"index": 0, "status": 200}\n')
    t = deploy.transform("tsum-moto", f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out", job="tsum-moto-t1",
                         instance_type=MOTO_INSTANCE, region=REGION, to=tmp_path / "results", poll_seconds=0)
    assert t["status"] == "Completed" and [p.split("/")[-1] for p in t["files"]] == ["a.jsonl.out"]
    assert sm.describe_transform_job(TransformJobName="tsum-moto-t1")["TransformInput"]["SplitType"] == "Line"

    gone = deploy.undeploy("tsum-moto", region=REGION)
    assert [op for op, _ in gone["requests"]] == ["DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]
    assert "tsum-moto" not in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    assert "tsum-moto" not in [m["ModelName"] for m in sm.list_models()["Models"]]
