"""package / deploy / invoke / undeploy / transform: the archive layout, the requests checked
against botocore's service model, and the calls against moto's server (real HTTP, real boto3;
the ``aws`` fixture of conftest.py): deploy, redeploy (UpdateEndpoint), undeploy after several
deploys, Batch Transform from a model folder or an existing model."""
from __future__ import annotations

import io
import json
import re
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from botocore.validate import ParamValidator  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from threadsum.cli import app  # noqa: E402
from threadsum.cloud import deploy  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir  # noqa: E402

REGION = "us-east-1"  # the region of conftest.py's aws fixture
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "threadsum-deploy-test"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("deploy-model"))


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


def _no_credentials(monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials an earlier test found


def test_dry_run_requests_match_the_service_model(model_dir, monkeypatch, tmp_path):
    _no_credentials(monkeypatch, tmp_path)
    common = ["--name", "tsum-demo", "--role", ROLE, "--s3-prefix", f"s3://{BUCKET}/threadsum", "--region", REGION,
              "--dry-run"]
    for mode in ([], ["--serverless", "--memory-mb", "4096", "--max-concurrency", "4"],
                 ["--async", "--output-s3", f"s3://{BUCKET}/async-out"]):
        r = CliRunner().invoke(app, ["sagemaker", "deploy", str(model_dir), *common, *mode])
        assert "assuming it does not exist (CreateEndpoint)" in r.stderr and "no AWS credentials" in r.stderr
        calls = _dry(["sagemaker", "deploy", str(model_dir), *common, *mode])
        assert [c["operation"] for c in calls] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
        for c in calls:
            _valid("sagemaker", c["operation"], c["request"])
        model, config, endpoint = (c["request"] for c in calls)
        version = model["ModelName"]
        assert re.fullmatch(r"tsum-demo-\d{8}-\d{6}", version) and config["EndpointConfigName"] == version
        assert config["ProductionVariants"][0]["ModelName"] == version and endpoint["EndpointConfigName"] == version
        assert all(r["Tags"] == [{"Key": "threadsum:endpoint", "Value": "tsum-demo"}] for r in (model, config, endpoint))
        assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://{BUCKET}/threadsum/tsum-demo/{version}/model.tar.gz"
        variant = config["ProductionVariants"][0]
        if "--serverless" in mode:
            assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 4}
            assert "-cpu-" in model["PrimaryContainer"]["Image"]
        else:
            assert variant["InstanceType"] == "ml.g5.xlarge" and "-gpu-" in model["PrimaryContainer"]["Image"]
        assert ("AsyncInferenceConfig" in config) == ("--async" in mode)
    r = CliRunner().invoke(app, ["sagemaker", "transform", "tsum-demo", "--input-s3", f"s3://{BUCKET}/in/",
                                 "--output-s3", f"s3://{BUCKET}/out", "--region", REGION, "--dry-run"])
    assert "assuming it is a model name" in r.stderr
    calls = _dry(["sagemaker", "transform", str(model_dir), "--role", ROLE, "--s3-prefix", f"s3://{BUCKET}/t",
                  "--input-s3", f"s3://{BUCKET}/in/", "--output-s3", f"s3://{BUCKET}/out", "--region", REGION,
                  "--job-name", "tsum-t", "--max-payload-mb", "40", "--image",
                  "123456789012.dkr.ecr.us-east-1.amazonaws.com/threadsum:1", "--dry-run"])
    assert [c["operation"] for c in calls] == ["CreateModel", "CreateTransformJob"]
    for c in calls:
        _valid("sagemaker", c["operation"], c["request"])
    model, job = calls[0]["request"], calls[1]["request"]
    assert model["ModelName"] == job["ModelName"] == "tsum-t"
    assert model["Tags"] == [{"Key": "threadsum:transform", "Value": "tsum-t"}]
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_MODEL_SERVER_TIMEOUT"] == "3600"
    assert job["TransformInput"]["SplitType"] == "Line" and job["BatchStrategy"] == "MultiRecord"
    # own image: the container's 4 concurrent requests, cut to 2 by SageMaker's 100 MB rule at 40 MB
    assert job["MaxPayloadInMB"] == 40 and job["MaxConcurrentTransforms"] == 2
    gone = deploy.undeploy("tsum-demo", region=REGION, dry_run=True)
    assert "found at run time" in gone["assumption"]
    for op, req in gone["requests"]:
        _valid("sagemaker", op, req)
    _valid("sagemaker-runtime", "InvokeEndpoint",
           {**deploy.invoke("tsum-demo", b"{}", region=REGION, dry_run=True)["request"], "Body": b"{}"})


MOTO_INSTANCE = "ml.g4dn.xlarge"  # moto 5.2.5's endpoint instance list predates ml.g5
MINE = {"Key": "threadsum:endpoint", "Value": "tsum-moto"}


def _at(minute: int) -> datetime:
    return datetime(2026, 1, 2, 3, minute, 5, tzinfo=timezone.utc)


def _tagged(sm, key: str, value: str) -> dict[str, list[str]]:
    """Names of the models, endpoint configs and endpoints on moto tagged key=value."""
    mine = {"Key": key, "Value": value}
    found = {"models": [m["ModelName"] for m in sm.list_models()["Models"]
                        if mine in sm.list_tags(ResourceArn=m["ModelArn"])["Tags"]],
             "configs": [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]
                         if mine in sm.list_tags(ResourceArn=c["EndpointConfigArn"])["Tags"]],
             "endpoints": [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]
                           if mine in sm.list_tags(ResourceArn=e["EndpointArn"])["Tags"]]}
    return found


def test_deploy_redeploy_undeploy_on_moto(aws, model_dir, tmp_path):
    sm = boto3.client("sagemaker", region_name=REGION)
    kw = dict(name="tsum-moto", role=ROLE, s3_prefix=f"s3://{BUCKET}/threadsum", region=REGION,
              instance_type=MOTO_INSTANCE, log=io.StringIO())
    first = deploy.deploy(model_dir, now=_at(1), **kw)
    v1 = "tsum-moto-20260102-030105"
    assert (first["action"], first["status"], first["model_name"], first["deleted"]) == ("create", "InService", v1, [])
    assert sm.describe_endpoint(EndpointName="tsum-moto")["EndpointConfigName"] == v1
    assert _tagged(sm, *MINE.values()) == {"models": [v1], "configs": [v1], "endpoints": ["tsum-moto"]}
    assert aws.head_object(Bucket=BUCKET, Key=f"threadsum/tsum-moto/{v1}/model.tar.gz")["ContentLength"] > 0
    # moto answers InvokeEndpoint with canned data: this checks the call, not the container
    assert deploy.invoke("tsum-moto", b'{"text": "hello"}', region=REGION)["body"]

    # the dry run reads the endpoint: UpdateEndpoint, then the deletes of v1 once the update is InService
    archive = deploy.package(model_dir, tmp_path / "model.tar.gz")["archive"]
    changed = dict(kw, overrides=["serve.max_batch_size=8"])
    plan = deploy.deploy(archive, now=_at(2), dry_run=True, **changed)
    v2 = "tsum-moto-20260102-030205"
    assert plan["assumption"] is None and plan["action"] == "update"
    assert [op for op, _ in plan["requests"]] == ["CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    assert plan["requests"][-1][1] == {"EndpointName": "tsum-moto", "EndpointConfigName": v2}
    assert plan["after_update"] == [("DeleteEndpointConfig", {"EndpointConfigName": v1}), ("DeleteModel", {"ModelName": v1})]
    for op, req in plan["requests"] + plan["after_update"]:
        _valid("sagemaker", op, req)

    second = deploy.deploy(archive, now=_at(2), **changed)
    assert second["action"] == "update" and second["status"] == "InService" and second["deleted"] == plan["after_update"]
    assert sm.describe_endpoint(EndpointName="tsum-moto")["EndpointConfigName"] == v2
    env = sm.describe_model(ModelName=v2)["PrimaryContainer"]["Environment"]
    assert env["THREADSUM_OVERRIDES"] == "serve.max_batch_size=8"
    assert _tagged(sm, *MINE.values()) == {"models": [v2], "configs": [v2], "endpoints": ["tsum-moto"]}
    assert aws.head_object(Bucket=BUCKET, Key=f"threadsum/tsum-moto/{v2}/model.tar.gz")["ContentLength"] > 0

    # --keep-previous keeps v2; an endpoint whose name starts the same is not this one's to delete
    third = deploy.deploy(f"s3://{BUCKET}/threadsum/tsum-moto/{v2}/model.tar.gz", now=_at(3), keep_previous=True, **kw)
    v3 = "tsum-moto-20260102-030305"
    assert third["action"] == "update" and third["deleted"] == [] and third["after_update"] == []
    other = deploy.deploy(f"s3://{BUCKET}/threadsum/tsum-moto/{v2}/model.tar.gz", now=_at(3),
                          **dict(kw, name="tsum-moto-b"))
    assert _tagged(sm, *MINE.values())["configs"] == [v2, v3]

    gone = deploy.undeploy("tsum-moto", region=REGION, log=io.StringIO())
    assert gone["requests"][0] == ("DeleteEndpoint", {"EndpointName": "tsum-moto"})
    assert {req["EndpointConfigName"] for op, req in gone["requests"] if op == "DeleteEndpointConfig"} == {v2, v3}
    assert {req["ModelName"] for op, req in gone["requests"] if op == "DeleteModel"} == {v2, v3}
    assert _tagged(sm, *MINE.values()) == {"models": [], "configs": [], "endpoints": []}
    assert "tsum-moto" not in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    assert sm.describe_endpoint(EndpointName="tsum-moto-b")["EndpointConfigName"] == other["config_name"]
    with pytest.raises(deploy.sm.SageMakerError, match="no endpoint tsum-moto and nothing tagged"):
        deploy.undeploy("tsum-moto", region=REGION)
    deploy.undeploy("tsum-moto-b", region=REGION, log=io.StringIO())
    assert _tagged(sm, "threadsum:endpoint", "tsum-moto-b") == {"models": [], "configs": [], "endpoints": []}


def test_redeploy_keeps_what_deploy_did_not_make(aws, model_dir):
    sm = boto3.client("sagemaker", region_name=REGION)
    uri = f"s3://{BUCKET}/byhand/model.tar.gz"
    aws.put_object(Bucket=BUCKET, Key="byhand/model.tar.gz", Body=b"not read by moto")
    sm.create_model(ModelName="byhand", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": "1.dkr.ecr/x:1", "ModelDataUrl": uri})
    sm.create_endpoint_config(EndpointConfigName="byhand", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "byhand", "InstanceType": MOTO_INSTANCE, "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName="byhand", EndpointConfigName="byhand")
    r = CliRunner().invoke(app, ["sagemaker", "deploy", uri, "--name", "byhand", "--role", ROLE, "--region", REGION,
                                 "--instance-type", MOTO_INSTANCE])
    assert r.exit_code == 0, r.output
    assert "updated" in r.stdout and "kept endpoint config byhand" in r.stderr and "kept model byhand" in r.stderr
    assert sm.describe_endpoint(EndpointName="byhand")["EndpointConfigName"].startswith("byhand-")
    assert sm.describe_model(ModelName="byhand") and sm.describe_endpoint_config(EndpointConfigName="byhand")
    r = CliRunner().invoke(app, ["sagemaker", "undeploy", "byhand", "--region", REGION])
    assert r.exit_code == 0, r.output
    assert sm.describe_model(ModelName="byhand")  # no longer the endpoint's, and not tagged: left alone
    assert _tagged(sm, "threadsum:endpoint", "byhand") == {"models": [], "configs": [], "endpoints": []}


def test_transform_on_moto(aws, model_dir, tmp_path):
    sm = boto3.client("sagemaker", region_name=REGION)
    deploy.deploy(model_dir, name="tsum-tf", role=ROLE, s3_prefix=f"s3://{BUCKET}/threadsum", region=REGION,
                  instance_type=MOTO_INSTANCE, now=_at(4), log=io.StringIO())
    inputs = {"in/a.jsonl": b'{"text": "a"}\n{"text": "b"}\n', "in/sub/b.jsonl": b'{"text": "c"}\n'}
    for key, body in inputs.items():
        aws.put_object(Bucket=BUCKET, Key=key, Body=body)
    # moto completes transform jobs at once and writes no output; place what SageMaker would write
    aws.put_object(Bucket=BUCKET, Key="out/a.jsonl.out", Body=b'{"index": 0, "status": 200}\n{"index": 1, "status": 200}\n')
    aws.put_object(Bucket=BUCKET, Key="out/sub/b.jsonl.out", Body=b'{"index": 0, "status": 200}')
    # an endpoint name stands for the model it serves
    t = deploy.transform("tsum-tf", f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out", job="tsum-tf-t1",
                         instance_type=MOTO_INSTANCE, region=REGION, to=tmp_path / "results", poll_seconds=0,
                         log=io.StringIO())
    assert t["status"] == "Completed" and t["model_name"] == "tsum-tf-20260102-030405" and t["lines"] == 3
    assert sorted(Path(f).relative_to(tmp_path / "results").as_posix() for f in t["files"]) == ["a.jsonl.out", "sub/b.jsonl.out"]
    d = sm.describe_transform_job(TransformJobName="tsum-tf-t1")
    assert d["ModelName"] == "tsum-tf-20260102-030405" and d["TransformInput"]["SplitType"] == "Line"

    # from a model folder: a model of the job's name, tagged for it; a short result file is an error
    aws.put_object(Bucket=BUCKET, Key="out2/a.jsonl.out", Body=b'{"index": 0, "status": 200}\n')
    with pytest.raises(deploy.sm.SageMakerError) as err:
        deploy.transform(str(model_dir), f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out2", job="tsum-tf-t2", role=ROLE,
                         s3_prefix=f"s3://{BUCKET}/t", instance_type=MOTO_INSTANCE, region=REGION,
                         to=tmp_path / "r2", poll_seconds=0, log=io.StringIO())
    assert "in/a.jsonl: 2 input lines, 1 result lines" in str(err.value) and "in/sub/b.jsonl: no result" in str(err.value)
    assert (tmp_path / "r2" / "a.jsonl.out").is_file()
    assert {"Key": "threadsum:transform", "Value": "tsum-tf-t2"} in sm.list_tags(
        ResourceArn=sm.describe_model(ModelName="tsum-tf-t2")["ModelArn"])["Tags"]
    assert aws.head_object(Bucket=BUCKET, Key="t/tsum-tf-t2/model.tar.gz")["ContentLength"] > 0
    with pytest.raises(deploy.sm.SageMakerError, match="no SageMaker model nope"):
        deploy.transform("nope", f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out", job="tsum-tf-t3",
                         instance_type=MOTO_INSTANCE, region=REGION, poll_seconds=0)
    deploy.undeploy("tsum-tf", region=REGION, log=io.StringIO())
