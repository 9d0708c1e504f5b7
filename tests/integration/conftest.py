"""Fixtures shared by the AWS tests: moto's server on 127.0.0.1 (real HTTP, real boto3, fake
credentials), one per test session.

A test module names its bucket with a module-level ``BUCKET``; the ``aws`` fixture creates it."""
from __future__ import annotations

import pytest

REGION = "us-east-1"


def _moto_update_endpoint(self):
    """UpdateEndpoint for moto's server, which implements no UpdateEndpoint (moto 5.2.5): the
    endpoint switches to the new config and its variants, InService at once, as SageMaker's
    blue/green update ends when it succeeds. A missing endpoint or config is SageMaker's
    ValidationException "Could not find ..."."""
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import FakeEndpoint

    backend = self.sagemaker_backend
    name, config_name = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
    endpoint = backend.endpoints.get(name)
    if endpoint is None:
        arn = FakeEndpoint.arn_formatter(name, backend.account_id, backend.region_name)
        raise ValidationError(message=f"Could not find endpoint '{arn}'.")
    config = backend.describe_endpoint_config(config_name)
    endpoint.endpoint_config_name = config_name
    endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
    endpoint.endpoint_status, endpoint.last_modified_time = "InService", utcnow()
    return ActionResult({"EndpointArn": endpoint.arn})


@pytest.fixture(scope="session")
def moto_server():
    """Base URL of a moto server started for the test session (it runs in this process)."""
    server_mod = pytest.importorskip("moto.server")
    responses = pytest.importorskip("moto.sagemaker.responses")
    if not hasattr(responses.SageMakerResponse, "update_endpoint"):
        responses.SageMakerResponse.update_endpoint = _moto_update_endpoint
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch, request):
    """An S3 client on the moto server with the module's ``BUCKET``; every boto3 client goes there too."""
    boto3 = pytest.importorskip("boto3")
    # fake credentials; botocore sends every service to the moto server through AWS_ENDPOINT_URL
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
                       "AWS_ENDPOINT_URL": moto_server}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = request.module.BUCKET
    s3 = boto3.client("s3", region_name=REGION)
    if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=bucket)
    return s3
