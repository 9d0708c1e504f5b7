"""`threadsum serve --sagemaker` started as SageMaker starts it: env vars, a model folder laid out as
/opt/ml/model (under THREADSUM_SM_ROOT), the port from SAGEMAKER_BIND_TO_PORT; real HTTP."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from threadsum.cloud import hosting  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir, sample_thread  # noqa: E402

PING_LIMIT_S = 90  # SageMaker's default container start-up health check allows 8 minutes; CI cores are slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt-ml")
    build_tiny_model_dir(root / "model")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "THREADSUM_SM_ROOT": str(root), hosting.PORT_ENV: str(port),
           # SageMaker's host is 0.0.0.0; tests listen on loopback only
           hosting.OVERRIDES_ENV: "serve.host=127.0.0.1 serve.max_batch_threads=2"}
    env.pop(hosting.MODEL_DIR_ENV, None)
    proc = subprocess.Popen([sys.executable, "-m", "threadsum", "serve", "--sagemaker"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    try:
        while True:
            try:
                if httpx.get(url + "/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"the container exited ({proc.returncode}):\n{proc.stdout.read()}")
            if time.monotonic() - t0 > PING_LIMIT_S:
                pytest.fail(f"/ping was not 200 within {PING_LIMIT_S} s")
            time.sleep(0.3)
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_execution_parameters(container):
    r = container.get("/execution-parameters")
    assert r.status_code == 200
    # queue_size 256 // batch limit 2 threads per request
    assert r.json() == {"MaxConcurrentTransforms": 128, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}


def test_json_one_thread_and_batch(container):
    r = container.post("/invocations", json=sample_thread(1))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["thread_id"] == "t1" and body["summary"].strip() and body["n_emails"] == 3
    # 3 threads with a batch limit of 2: sent to the batcher in two steps, answered in order
    threads = [sample_thread(s) for s in (2, 3, 4)]
    r = container.post("/invocations", json={"threads": threads})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [x["index"] for x in out["results"]] == [0, 1, 2]
    assert [x["thread_id"] for x in out["results"]] == ["t2", "t3", "t4"]
    assert out["n_ok"] == 3 and out["n_failed"] == 0


def test_json_refused_thread_keeps_its_status(container):
    r = container.post("/invocations", json={"emails": [{"from": "x"}]})
    assert r.status_code == 422 and "emails.0.body" in r.json()["detail"]


def test_jsonlines_in_order_with_a_malformed_line(container):
    lines = [json.dumps(sample_thread(5)), "{not json", json.dumps(sample_thread(6)), json.dumps({"text": ""}),
             json.dumps(sample_thread(7))]
    r = container.post("/invocations", content="\n".join(lines) + "\n",
                       headers={"Content-Type": "application/jsonlines"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/jsonlines")
    out = [json.loads(line) for line in r.text.split("\n")]
    assert len(out) == 5 and [x["index"] for x in out] == [0, 1, 2, 3, 4]
    assert [x["status"] for x in out] == [200, 422, 200, 422, 200]
    assert [out[i]["thread_id"] for i in (0, 2, 4)] == ["t5", "t6", "t7"]
    assert "line 2" in out[1]["error"] and "not valid JSON" in out[1]["error"]
    assert all(out[i]["summary"].strip() for i in (0, 2, 4))


def test_payload_over_six_mb_is_413(container):
    body = b'{"text": "' + b"a" * (6 * hosting.MB) + b'"}'
    r = container.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    detail = r.json()["detail"]
    assert "SageMaker sends at most 6 MB" in detail and "threadsum sagemaker transform" in detail


def test_unsupported_content_type_is_415(container):
    r = container.post("/invocations", content=b"a,b", headers={"Content-Type": "text/csv"})
    assert r.status_code == 415 and "application/jsonlines" in r.json()["detail"]


def test_missing_model_folder_exits_2(tmp_path):
    env = {**os.environ, "THREADSUM_SM_ROOT": str(tmp_path)}
    env.pop(hosting.MODEL_DIR_ENV, None)
    p = subprocess.run([sys.executable, "-m", "threadsum", "serve", "--sagemaker"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "threadsum sagemaker package" in p.stdout + p.stderr


def test_pytorch_toolkit_entry_answers_like_the_container(tmp_path, monkeypatch):
    """code/inference.py of the archive, called as the PyTorch inference toolkit calls it."""
    import importlib.util
    import tarfile

    from threadsum.cloud import deploy

    archive = deploy.package(build_tiny_model_dir(tmp_path / "src"), tmp_path / "model.tar.gz")["archive"]
    model = tmp_path / "opt-ml-model"
    with tarfile.open(archive) as tar:
        tar.extractall(model, filter="data")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = importlib.util.spec_from_file_location("sm_inference", model / "code" / "inference.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    bridge = entry.model_fn(str(model))
    try:
        body, ctype = entry.transform_fn(bridge, json.dumps(sample_thread(8)) + "\n{bad\n", hosting.JSONLINES)
        out = [json.loads(line) for line in body.decode().split("\n")]
        assert ctype.startswith(hosting.JSONLINES) and [x["status"] for x in out] == [200, 422]
        with pytest.raises(Exception) as err:
            entry.transform_fn(bridge, b"a,b", "text/csv")
        assert getattr(err.value, "status_code", None) == 415
    finally:
        bridge.close()
