"""The OpenAPI schema says what the service accepts, checked by schemathesis against the real server.

A bounded run (a fixed seed, a few examples per operation, every check) on the tiny random model:
schema-valid requests must be accepted, schema-invalid ones refused with a documented 4xx, and no
response may be a 5xx or undocumented. Kept well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from threadsum.config import ServeConfig  # noqa: E402
from threadsum.inference.summarizer import Summarizer  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir  # noqa: E402
from threadsum.serve.app import create_app, serve_in_thread  # noqa: E402

CFG = ServeConfig(max_emails=3, max_chars=4000, max_batch_threads=3, max_body_bytes=200_000)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    torch.set_num_threads(1)
    model_dir = build_tiny_model_dir(tmp_path_factory.mktemp("schema-model"))
    summarizer = Summarizer.from_pretrained(str(model_dir), device="cpu")
    with serve_in_thread(create_app(summarizer, CFG)) as base:
        yield base


def test_schema_states_the_constraints(url):
    schema = httpx.get(url + "/openapi.json").json()
    comps = schema["components"]["schemas"]
    thread = comps["ThreadIn"]
    assert thread["oneOf"] == [{"required": ["emails"]}, {"required": ["text"]}]
    assert thread["properties"]["emails"]["minItems"] == 1 and thread["properties"]["emails"]["maxItems"] == 3
    assert thread["properties"]["text"]["minLength"] == 1 and thread["properties"]["text"]["maxLength"] == 4000
    assert comps["EmailIn"]["properties"]["body"]["maxLength"] == 4000
    assert comps["BatchIn"]["properties"]["threads"]["minItems"] == 1
    assert comps["BatchIn"]["properties"]["threads"]["maxItems"] == 3
    responses = schema["paths"]["/v1/summarize"]["post"]["responses"]
    assert {"200", "401", "413", "422", "500", "503"} <= set(responses)


def test_bounded_schemathesis_run_passes(url, tmp_path):
    st = shutil.which("st", path=os.path.dirname(sys.executable)) or shutil.which("st")
    if st is None:
        pytest.skip("schemathesis is not installed: pip install 'threadsum[dev]'")
    cmd = [st, "run", url + "/openapi.json", "--checks", "all", "--max-examples", "8", "--seed", "1",
           "--request-timeout", "60", "--phases", "examples,coverage,fuzzing", "--no-color",
           "--include-path-regex", "^/(v1/summarize|healthz|readyz)"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    report = re.sub(r"(.)\1{40,}", lambda m: f"{m.group(1)}<x{len(m.group(0))}>", proc.stdout)  # long generated strings
    assert proc.returncode == 0, report[-8000:] + proc.stderr[-2000:]
    print(report[-700:])  # the summary: cases generated, phases, time
