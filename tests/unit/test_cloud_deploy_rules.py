"""The naming rule of deploy's versioned resources, the transform concurrency rule, and the JSON
Lines record rule that reconciles Batch Transform results (no AWS calls)."""
from __future__ import annotations

import io
from datetime import datetime, timezone

import pytest

from threadsum.cloud import deploy, hosting
from threadsum.cloud import sagemaker as sm

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize("base, expected", [
    ("tsum", "tsum-20260102-030405"),
    ("my_model v2!", "my-model-v2-20260102-030405"),
    ("--x--", "x-20260102-030405"),
    ("***", "threadsum-20260102-030405"),
    ("a" * 100, "a" * 47 + "-20260102-030405"),
    ("a" * 46 + "-b" * 10, "a" * 46 + "-20260102-030405"),  # the cut falls on a hyphen: no "--" left
])
def test_stamped_name(base, expected):
    name = sm.stamped_name(base, NOW)
    assert name == expected
    assert len(name) <= sm.NAME_MAX
    assert sm.validate_job_name(name) == name
    assert name.startswith(sm.stamp_prefix(base) + "-")


def test_every_endpoint_name_gets_valid_distinct_versions():
    later = datetime(2026, 1, 2, 3, 4, 6, tzinfo=timezone.utc)
    for n in range(1, 64):
        endpoint = ("e-" * 40)[:n].rstrip("-") or "e"
        sm.validate_job_name(endpoint)
        first, second = sm.stamped_name(endpoint, NOW), sm.stamped_name(endpoint, later)
        assert first != second and len(first) <= 63
        sm.validate_job_name(first)
        # undeploy narrows ListEndpointConfigs / ListModels by this prefix (NameContains)
        assert sm.stamp_prefix(endpoint) in first and sm.stamp_prefix(endpoint) == endpoint[:47].rstrip("-")


def test_resource_name_reduction():
    assert sm.resource_name("threadsum/bart large_v1") == "threadsum-bart-large-v1"
    assert sm.resource_name("x" * 70) == "x" * 63
    assert sm.resource_name("") == "threadsum"


@pytest.mark.parametrize("own, payload, expected", [(False, 6, 1), (True, 6, 4), (True, 40, 2), (True, 100, 1),
                                                    (False, 100, 1)])
def test_max_concurrent_transforms(own, payload, expected):
    n = deploy.max_concurrent_transforms(own, payload)
    assert n == expected and n * payload <= hosting.MAX_TRANSFORM_PAYLOAD_MB


@pytest.mark.parametrize("body, n", [(b"", 0), (b"{}", 1), (b"{}\n", 1), (b"{}\n{}", 2), (b"{}\n\n{}\n", 3),
                                     (b"{}\r\n{}\r\n", 2)])
def test_jsonl_records(body, n):
    assert len(hosting.jsonl_records(body)) == n


@pytest.mark.parametrize("state, fix", [("Updating", "wait until it is InService"), ("Creating", "wait until"),
                                        ("Failed", "undeploy"), ("OutOfService", "undeploy")])
def test_busy_or_failed_endpoints_are_refused(state, fix):
    with pytest.raises(sm.SageMakerError, match=fix):
        deploy._refuse_busy({"EndpointStatus": state}, "tsum")
    deploy._refuse_busy({"EndpointStatus": "InService"}, "tsum")
    deploy._refuse_busy(None, "tsum")


def test_every_created_resource_is_tagged():
    tags = deploy.endpoint_tags("tsum")
    model = deploy.model_request("tsum-v", "img", "s3://b/k", "arn", "us-east-1", tags=tags)
    config = deploy.endpoint_config_request("tsum-v", instance_type="ml.g5.xlarge", tags=tags)
    assert model["Tags"] == config["Tags"] == [{"Key": deploy.TAG_ENDPOINT, "Value": "tsum"}]
    assert config["ProductionVariants"][0]["ModelName"] == "tsum-v"


def test_an_update_that_rolled_back_is_an_error(monkeypatch):
    """SageMaker rolls a failed blue/green update back: InService again, on the previous config."""
    boto3 = pytest.importorskip("boto3")
    from botocore.stub import Stubber

    client = boto3.client("sagemaker", region_name="us-east-1")
    monkeypatch.setattr(sm, "_client", lambda service, region: client)
    old, arn = "tsum-20260101-000000", "arn:aws:sagemaker:us-east-1:123456789012:"
    tags = {"Tags": [{"Key": deploy.TAG_ENDPOINT, "Value": "tsum"}]}
    serving = {"EndpointName": "tsum", "EndpointArn": arn + "endpoint/tsum", "EndpointConfigName": old,
               "EndpointStatus": "InService", "CreationTime": NOW, "LastModifiedTime": NOW}
    config = {"EndpointConfigName": old, "EndpointConfigArn": arn + "endpoint-config/" + old, "CreationTime": NOW,
              "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": old}]}
    with Stubber(client) as stub:
        stub.add_response("describe_endpoint", serving, {"EndpointName": "tsum"})
        stub.add_response("describe_endpoint_config", config, {"EndpointConfigName": old})
        stub.add_response("list_tags", tags, {"ResourceArn": config["EndpointConfigArn"]})
        stub.add_response("describe_endpoint_config", config, {"EndpointConfigName": old})
        stub.add_response("describe_model", {"ModelName": old, "ModelArn": arn + "model/" + old, "CreationTime": NOW},
                          {"ModelName": old})
        stub.add_response("list_tags", tags, {"ResourceArn": arn + "model/" + old})
        stub.add_response("create_model", {"ModelArn": arn + "model/new"})
        stub.add_response("create_endpoint_config", {"EndpointConfigArn": arn + "endpoint-config/new"})
        stub.add_response("update_endpoint", {"EndpointArn": serving["EndpointArn"]},
                          {"EndpointName": "tsum", "EndpointConfigName": "tsum-20260102-030405"})
        rolled_back = {**serving, "FailureReason": "the primary container did not pass the ping health check"}
        stub.add_response("describe_endpoint", rolled_back, {"EndpointName": "tsum"})  # the waiter
        stub.add_response("describe_endpoint", rolled_back, {"EndpointName": "tsum"})
        with pytest.raises(sm.SageMakerError, match=f"InService; it still serves {old}: the primary container"):
            deploy.deploy("s3://my-bucket/k/model.tar.gz", name="tsum", role="arn:aws:iam::123456789012:role/R",
                          s3_prefix=None, region="us-east-1", now=NOW, log=io.StringIO())
        stub.assert_no_pending_responses()  # nothing deleted: the previous version still serves
