"""The HTTP service, run for real (uvicorn on 127.0.0.1, a free port) around a tiny random model.

Covers valid and invalid requests, every limit, the 503 path, auth, CORS, request logs without
bodies, the `threadsum serve` command in a subprocess, and a bounded load test.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from email.message import EmailMessage

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from threadsum.config import ConfigError, ServeConfig  # noqa: E402
from threadsum.inference.summarizer import Summarizer  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir, sample_thread  # noqa: E402
from threadsum.serve.app import create_app, serve_in_thread  # noqa: E402

SECRET = "Zq7-confidential-merger-codeword"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module")
def summarizer(model_dir):
    torch.set_num_threads(1)  # shared CI cores: one intra-op thread avoids oversubscription stalls
    return Summarizer.from_pretrained(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def server(summarizer):
    cfg = ServeConfig(max_body_bytes=50_000, max_emails=5, max_chars=20_000, max_batch_threads=4,
                      cors_origins=["http://allowed.example"])
    with serve_in_thread(create_app(summarizer, cfg)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def _eml_text(body: str) -> str:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Alice <alice@example.com>", "Bob <bob@example.com>", "Pipeline capacity"
    m["Date"] = "Tue, 29 Jan 2002 11:23:42 -0600"
    m.set_content(body)
    return m.as_string()


# ------------------------------------------------------------------------------------- happy
def test_health_ready_docs_and_page(server):
    assert server.get("/healthz").json() == {"status": "ok"}
    assert server.get("/readyz").json() == {"status": "ready"}  # public probes reveal nothing else
    status = server.get("/v1/status").json()
    assert status["device"] == "cpu" and status["limits"]["max_emails"] == 5 and "torch" in status
    paths = server.get("/openapi.json").json()["paths"]
    assert {"/v1/summarize", "/v1/summarize/batch", "/healthz", "/readyz", "/v1/status"} <= set(paths)
    docs = server.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # assets served locally
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert asset in docs.text and server.get(f"/static-offline-docs/{asset}").status_code == 200
    page = server.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="summarize"' in page.text


def test_summarize_structured_text_and_eml(server):
    r = server.post("/v1/summarize", json=sample_thread(1))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["thread_id"] == "t1" and body["summary"].strip() and body["n_emails"] == 3 and body["elapsed_ms"] > 0
    assert r.headers["x-request-id"]
    r = server.post("/v1/summarize", json={"text": "Bob, the storage report is late again. Can you chase legal?"})
    assert r.status_code == 200 and r.json()["summary"].strip()
    r = server.post("/v1/summarize", json={"text": _eml_text("Capacity is full until March.")})
    assert r.status_code == 200 and r.json()["subject"] == "Pipeline capacity"


def test_batch_answers_in_request_order(server):
    threads = [sample_thread(i, n_emails=1 + i, words=5 + 30 * i) for i in range(4)]
    r = server.post("/v1/summarize/batch", json={"threads": threads})
    assert r.status_code == 200, r.text
    assert [x["thread_id"] for x in r.json()["results"]] == ["t0", "t1", "t2", "t3"]
    one = server.post("/v1/summarize", json=threads[2]).json()["summary"]
    assert r.json()["results"][2]["summary"] == one


# ----------------------------------------------------------------------------------- invalid
@pytest.mark.parametrize("payload, needle", [
    ({"emails": [{"from": "a"}]}, "emails.0.body"),
    ({}, "exactly one of 'emails'"),
    ({"text": "x", "emails": [{"body": "y"}]}, "exactly one of 'emails'"),
    ({"text": "   "}, "text: holds no text"),
    ({"emails": [{"body": "x", "date": ["the day after"]}]}, "date"),
    ({"emails": [{"body": "x", "date": False}]}, "date"),
    ({"emails": "nope"}, "emails"),
])
def test_invalid_threads_get_422_naming_the_problem(server, payload, needle):
    r = server.post("/v1/summarize", json=payload)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


def test_malformed_json_and_wrong_shapes_are_4xx(server):
    r = server.post("/v1/summarize", content=b'{"text": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "character position 9" in r.json()["detail"] and "line 1, column 10" in r.json()["detail"]
    r = server.post("/v1/summarize", content=b'{"text": "caf\xe9 ok"}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid UTF-8" in r.json()["detail"] and "byte offset 13" in r.json()["detail"]
    r = server.post("/v1/summarize", content=b'{"text": "x", "e": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "nested too deeply" in r.json()["detail"]
    assert server.post("/v1/summarize/batch", json={"threads": []}).status_code == 422
    assert server.get("/v1/summarize").status_code == 405


def test_validation_errors_do_not_echo_the_body(server):
    r = server.post("/v1/summarize", json={"emails": [{"from": SECRET, "date": [SECRET]}]})
    assert r.status_code == 422 and SECRET not in r.text


def test_limits_name_the_setting(server):
    r = server.post("/v1/summarize", json=sample_thread(1, n_emails=6, words=3))
    assert r.status_code == 422 and "serve.max_emails=5" in r.json()["detail"]
    r = server.post("/v1/summarize", json={"text": "word " * 5000})
    assert r.status_code == 422 and "serve.max_chars=20000" in r.json()["detail"]
    r = server.post("/v1/summarize/batch", json={"threads": [sample_thread(i, words=3) for i in range(5)]})
    assert r.status_code == 422 and "serve.max_batch_threads=4" in r.json()["detail"]
    big = b'{"text": "' + b"a" * 60_000 + b'"}'
    r = server.post("/v1/summarize", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "serve.max_body_bytes=50000" in r.json()["detail"]

    def chunked():  # no Content-Length: the limit must hold while streaming
        yield b'{"text": "'
        for _ in range(20):
            yield b"b" * 4096
        yield b'"}'

    r = server.post("/v1/summarize", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_cors_allows_only_configured_origins(server):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-api-key"}
    ok = server.options("/v1/summarize", headers={"Origin": "http://allowed.example", **pre})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://allowed.example"
    bad = server.options("/v1/summarize", headers={"Origin": "http://evil.example", **pre})
    assert "access-control-allow-origin" not in bad.headers


def test_request_logs_never_contain_bodies(server, caplog):
    caplog.set_level(logging.INFO, logger="threadsum.serve")
    server.post("/v1/summarize", json={"text": f"The {SECRET} closes Friday."})
    server.post("/v1/summarize", json={"emails": [{"from": SECRET}]})
    server.post("/v1/summarize", content=b'{"text": "' + SECRET.encode() * 3000 + b'"}',
                headers={"content-type": "application/json"})
    wanted = ("POST /v1/summarize 200", "POST /v1/summarize 422", "POST /v1/summarize 413")
    deadline = time.monotonic() + 5
    while True:  # the server thread logs after the last byte is sent: the client can be faster
        lines = [r.getMessage() for r in caplog.records if r.name == "threadsum.serve"]
        if all(any(w in line for line in lines) for w in wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert any("POST /v1/summarize 200" in line for line in lines)
    assert any("POST /v1/summarize 422" in line for line in lines)
    assert any("POST /v1/summarize 413" in line for line in lines)
    assert not any(SECRET in line for line in lines)


# ------------------------------------------------------------------------------ auth and 503
def test_api_key_is_required_when_configured(summarizer):
    with serve_in_thread(create_app(summarizer, ServeConfig(api_key="s3cret"))) as url:
        assert httpx.post(url + "/v1/summarize", json={"text": "hi there"}).status_code == 401
        r = httpx.post(url + "/v1/summarize", json={"text": "hi there"}, headers={"X-API-Key": "wrong"})
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        r = httpx.post(url + "/v1/summarize", json={"text": "hi there"}, headers={"X-API-Key": "s3cret"}, timeout=60)
        assert r.status_code == 200
        assert httpx.get(url + "/healthz").status_code == 200  # probes stay open


class SlowSummarizer(Summarizer):
    """Test hook: the real generation, made slow enough to fill the queue on purpose."""

    delay_s = 1.0

    def generate(self, texts, batch_size=None):
        time.sleep(self.delay_s)
        return super().generate(texts, batch_size)


def test_full_queue_answers_503_with_retry_after(summarizer):
    slow = SlowSummarizer(summarizer.model, summarizer.tokenizer, summarizer.cfg, summarizer.device)
    cfg = ServeConfig(queue_size=1, max_batch_size=1, max_wait_ms=0, warmup=False)
    with serve_in_thread(create_app(slow, cfg)) as url:
        with cf.ThreadPoolExecutor(4) as pool:
            first = pool.submit(httpx.post, url + "/v1/summarize", json={"text": "first thread"}, timeout=60)
            time.sleep(0.4)  # the first request is now generating and holds the only slot
            r = httpx.post(url + "/v1/summarize", json={"text": "second thread"}, timeout=60)
            assert r.status_code == 503
            assert int(r.headers["Retry-After"]) >= 1 and "serve.queue_size=1" in r.json()["detail"]
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # loop stays responsive
            assert first.result().status_code == 200
        assert httpx.post(url + "/v1/summarize", json={"text": "third"}, timeout=60).status_code == 200


# ------------------------------------------------------------------------------ the command
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_threadsum_serve_command_runs_and_stops(model_dir):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "threadsum", "serve", "--model", str(model_dir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        else:
            pytest.fail("threadsum serve did not become ready in 90 s")
        r = httpx.post(f"http://127.0.0.1:{port}/v1/summarize", json={"text": f"{SECRET} arrives"}, timeout=60)
        assert r.status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so supervisors see the usual status
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out
    assert "POST /v1/summarize 200" in out and SECRET not in out


# ------------------------------------------------------------------------------- load test
def _rss_mb() -> float:
    psutil = pytest.importorskip("psutil")
    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.slow
def test_bounded_load_mixed_valid_and_invalid(summarizer):
    """Concurrent clients under capacity: no 5xx, every invalid payload 4xx, memory flat."""
    cfg = ServeConfig(max_batch_size=8, max_wait_ms=10, queue_size=64, max_emails=10, max_chars=20_000,
                      max_body_bytes=100_000)
    rng = random.Random(0)
    invalid = [
        {"emails": [{"from": "x"}]},
        {"text": ""},
        {"emails": [{"body": "b", "date": True}]},
        sample_thread(99, n_emails=12, words=2),
        {"text": "z" * 30_000},
    ]

    def payload(i: int):
        if i % 4 == 3:
            return False, invalid[i % len(invalid)]
        return True, sample_thread(i, n_emails=rng.randint(1, 5), words=rng.randint(5, 80))

    with serve_in_thread(create_app(summarizer, cfg)) as url:
        client = httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=16))

        def call(i):
            ok, body = payload(i)
            return ok, client.post("/v1/summarize", json=body).status_code

        def wave(start: int, n: int):
            with cf.ThreadPoolExecutor(8) as pool:  # 8 clients < queue_size: under capacity
                return list(pool.map(call, range(start, start + n)))

        wave(0, 40)  # warm: allocator pools, tokenizer caches, first shapes
        rss_before = _rss_mb()
        t0 = time.perf_counter()
        results = wave(40, 160)
        elapsed = time.perf_counter() - t0
        rss_after = _rss_mb()
        stats = client.get("/v1/status").json()["batching"]
        client.close()

    valid = [code for ok, code in results if ok]
    bad = [code for ok, code in results if not ok]
    assert all(code == 200 for code in valid), sorted(set(valid))
    assert all(400 <= code < 500 for code in bad), sorted(set(bad))
    assert stats["mean_batch_size"] > 1.0  # concurrency actually turned into batches
    # flat: a leak of even a few KB per request would show over 160 requests with 1 MB bodies off
    assert rss_after - rss_before < 60, (rss_before, rss_after)
    assert elapsed < 120


# ------------------------------------------------------------ issue 13/15: per-thread answers
def test_nothing_to_summarize_is_422_everywhere(server):
    for payload in ({"emails": [{"from": "a@x.com", "body": "   "}]}, {"emails": [{"from": "", "body": "<p></p>&nbsp;"}]},
                    {"text": "<br>&nbsp;&amp;"}):
        r = server.post("/v1/summarize", json=payload)
        assert r.status_code == 422 and ("no body text" in r.json()["detail"] or "holds no text" in r.json()["detail"]), r.text


def test_outlook_msg_is_422_naming_the_export_and_mail_api_json_is_read(server):
    msg = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600 + "Budget review".encode("utf-16-le")
    # the page loads a chosen file with File.text() (UTF-8, bad bytes replaced) and sends it as text
    for url in ("/v1/summarize", "/v1/summarize/batch"):
        r = server.post(url, json={"text": msg.decode("utf-8", "replace")})
        assert r.status_code == 422 and "Outlook .msg" in r.json()["detail"] and "msgconvert" in r.json()["detail"], r.text
    assert server.post("/v1/summarize", content=msg, headers={"content-type": "application/json"}).status_code == 422
    graph = {"value": [{"id": "A1", "conversationId": "C1", "subject": "Pipeline capacity",
                        "sentDateTime": "2002-01-29T11:23:42Z", "body": {"contentType": "text", "content":
                        "Can we move 40 MW to the Mid-C desk on Friday?"},
                        "from": {"emailAddress": {"name": "Alice", "address": "alice@example.com"}}}]}
    r = server.post("/v1/summarize/batch", json={"text": json.dumps(graph)})
    assert r.status_code == 200 and r.json()["results"][0]["n_emails"] == 1, r.text


def test_lone_surrogates_are_repaired_never_a_500(server):
    raw = b'{"thread_id": "abc-123", "subject": "Q3 budget", "text": "hello \\ud800 world please send"}'
    r = server.post("/v1/summarize", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["thread_id"] == "abc-123" and body["subject"] == "Q3 budget" and body["summary"]
    assert body["warnings"] == ["text: 1 lone surrogate code point (not valid Unicode) replaced by U+FFFD"]
    raw = b'{"emails": [{"from": "a\\udc00", "body": "storage report \\ud800 late"}]}'
    r = server.post("/v1/summarize", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200 and any(w.startswith("emails[0].from") for w in r.json()["warnings"])


def test_batch_answers_per_thread(server):
    raw = ('{"threads": [' + ",".join([
        '{"thread_id": "good", "text": "Bob, the storage report is late again."}',
        '{"thread_id": "sur", "text": "hello \\ud800 world please send"}',
        '{"thread_id": "empty", "emails": [{"from": "a@x.com", "body": "<p> </p>&nbsp;"}]}',
        '{"thread_id": "big", "emails": [' + ",".join(['{"body": "x"}'] * 6) + ']}',
    ]) + "]}").encode()
    r = server.post("/v1/summarize/batch", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["index"] for x in res] == [0, 1, 2, 3] and r.json()["n_ok"] == 2 and r.json()["n_failed"] == 2
    assert res[0]["status"] == 200 and res[0]["summary"] and res[0]["error"] is None
    assert res[1]["status"] == 200 and res[1]["thread_id"] == "sur" and res[1]["warnings"]
    assert res[2]["status"] == 422 and "no body text" in res[2]["error"] and res[2]["summary"] is None
    assert res[3]["status"] == 422 and "serve.max_emails=5" in res[3]["error"]


def test_requests_keep_given_fields_and_ids_follow_content(server):
    r = server.post("/v1/summarize", json={"thread_id": "abc-123", "subject": "Q3 budget", "text": "Send the budget."})
    assert (r.json()["thread_id"], r.json()["subject"]) == ("abc-123", "Q3 budget")
    r = server.post("/v1/summarize", json={"emails": [{"body": "Send the budget.", "date": "the day after"}]})
    assert r.status_code == 200 and "emails[0].date 'the day after' is not understood" in r.json()["warnings"][0]
    a = server.post("/v1/summarize", json={"text": _eml_text("Capacity is full until March.\n-- Ann")}).json()
    b = server.post("/v1/summarize", json={"text": _eml_text("Capacity is full until March.\n-- Bob")}).json()
    assert a["thread_id"] != b["thread_id"] and a["subject"] == "Pipeline capacity"


def test_mbox_text_goes_to_the_batch_endpoint(server):
    mbox = "".join(f"From a@example.com Mon May 14 09:12:00 2001\n{_eml_text(body)}\n".replace(
        "Subject: Pipeline capacity", f"Subject: {subj}") for subj, body in
        (("Budget", "Numbers attached for Q3."), ("Party", "Friday at six in the lobby.")))
    r = server.post("/v1/summarize", json={"text": mbox})
    assert r.status_code == 422 and "POST /v1/summarize/batch" in r.json()["detail"]
    r = server.post("/v1/summarize/batch", json={"text": mbox})
    assert r.status_code == 200 and sorted(x["subject"] for x in r.json()["results"]) == ["Budget", "Party"]


class EmptyOutputSummarizer(Summarizer):
    """Test hook: a model that produces nothing for texts carrying a marker (as a diverged one does)."""

    def generate(self, texts, batch_size=None):
        return ["" if "NOTHING-OUT" in t else s for t, s in zip(texts, super().generate(texts, batch_size))]


def test_an_empty_summary_is_a_500_never_a_success(summarizer):
    s = EmptyOutputSummarizer(summarizer.model, summarizer.tokenizer, summarizer.cfg, summarizer.device)
    with serve_in_thread(create_app(s, ServeConfig(warmup=False))) as url:
        r = httpx.post(url + "/v1/summarize", json={"text": "NOTHING-OUT please"}, timeout=60)
        assert r.status_code == 500 and "empty summary" in r.json()["detail"]
        r = httpx.post(url + "/v1/summarize/batch", json={"threads": [{"text": "NOTHING-OUT please"},
                                                                      {"text": "Send the report."}]}, timeout=60)
        res = r.json()["results"]
        assert r.status_code == 200 and [x["status"] for x in res] == [500, 200] and res[0]["summary"] is None


# ---------------------------------------------------------------------- issue 15: auth first
def test_auth_comes_before_reading_the_body_and_probes_reveal_nothing(summarizer):
    cfg = ServeConfig(api_key="s3cret", max_body_bytes=1000, warmup=False)
    with serve_in_thread(create_app(summarizer, cfg)) as url:
        big = b'{"text": "' + b"a" * 5000 + b'"}'
        assert httpx.post(url + "/v1/summarize", content=big, headers={"content-type": "application/json"}).status_code == 401
        assert httpx.post(url + "/v1/summarize", content=b"{oops", headers={"content-type": "application/json"}).status_code == 401
        assert httpx.post(url + "/v1/summarize/batch", json={"threads": []}).status_code == 401
        assert httpx.get(url + "/v1/status").status_code == 401
        ready = httpx.get(url + "/readyz")
        assert ready.json() == {"status": "ready"} and "torch" not in ready.text and "model" not in ready.text
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        assert httpx.get(url + "/v1/status", headers={"X-API-Key": "s3cret"}).json()["auth"] is True
        r = httpx.post(url + "/v1/summarize", content=big, headers={"content-type": "application/json", "X-API-Key": "s3cret"})
        assert r.status_code == 413


# ------------------------------------------------------------ issue 15: clients that left
class RecordingSlowSummarizer(SlowSummarizer):
    delay_s = 1.5
    seen: list = []

    def generate(self, texts, batch_size=None):
        type(self).seen.extend(texts)
        return super().generate(texts, batch_size)


def test_a_disconnected_clients_threads_are_withdrawn(summarizer):
    slow = RecordingSlowSummarizer(summarizer.model, summarizer.tokenizer, summarizer.cfg, summarizer.device)
    cfg = ServeConfig(max_batch_size=1, max_wait_ms=0, warmup=False)
    with serve_in_thread(create_app(slow, cfg)) as url:
        with cf.ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, url + "/v1/summarize", json={"text": "FIRST thread here"}, timeout=60)
            time.sleep(0.4)  # FIRST is generating; the next request queues behind it
            with pytest.raises(httpx.TimeoutException):
                httpx.post(url + "/v1/summarize/batch", json={"threads": [{"text": f"LEFT number {i}"} for i in range(3)]},
                           timeout=0.5)
            deadline = time.monotonic() + 5
            while httpx.get(url + "/v1/status").json()["pending"] > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert httpx.get(url + "/v1/status").json()["pending"] <= 1  # withdrawn before FIRST finished
            assert first.result().status_code == 200
        assert httpx.get(url + "/v1/status").json()["pending"] == 0
    assert not any("LEFT" in t for t in RecordingSlowSummarizer.seen)


class InventingSummarizer(Summarizer):
    """The real service path around a model that writes a fixed summary with an invented person."""

    def generate(self, texts, batch_size=None):
        return ["Reagan Nemec asks Bob Jones to send the Q3 budget by Friday." for _ in texts]


def test_answers_carry_the_summary_claims_checked_against_the_thread(summarizer):
    s = InventingSummarizer(summarizer.model, summarizer.tokenizer, summarizer.cfg, summarizer.device)
    thread = {"subject": "Q3 budget", "emails": [
        {"from": "Ann Smith <ann@example.com>", "to": ["Bob Jones <bob@example.com>"],
         "body": "Bob, can you send the revised Q3 budget by Friday?"}]}
    with serve_in_thread(create_app(s, ServeConfig(warmup=False))) as url:
        one = httpx.post(url + "/v1/summarize", json=thread, timeout=60).json()
        batch = httpx.post(url + "/v1/summarize/batch", json={"threads": [thread]}, timeout=60).json()
    for answer in (one, batch["results"][0]):
        claims = {(c["text"], c["kind"]): c for c in answer["claims"]}
        assert claims[("Reagan Nemec", "person")]["supported"] is False
        assert claims[("Bob Jones", "person")]["supported"] is True
        assert claims[("Friday", "weekday")]["evidence"]["email"] == 0
        for c in answer["claims"]:
            assert answer["summary"][c["start"]:c["end"]] == c["text"]
        cov = answer["coverage"]  # the request and its deadline are important and carried
        assert set(cov) == {"left_out", "important", "carried_share"}
        assert cov["important"] >= 2 and cov["left_out"] == [] and cov["carried_share"] == 1.0


# ---------------------------------------------------------------------------- causal model
def test_a_causal_model_serves_through_the_same_service(tmp_path):
    """A decoder-only model folder: the same endpoints, batch = one at a time, no prompt in the output."""
    folder = build_tiny_model_dir(tmp_path / "causal", overrides={"model.tiny.architecture": "llama"})
    summarizer = Summarizer.from_pretrained(str(folder), device="cpu")
    assert summarizer.family.name == "causal"
    with serve_in_thread(create_app(summarizer, ServeConfig())) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            threads = [sample_thread(i, n_emails=1 + i, words=5 + 30 * i) for i in range(3)]
            r = client.post("/v1/summarize/batch", json={"threads": threads})
            assert r.status_code == 200, r.text
            batch = [x["summary"] for x in r.json()["results"]]
            for t, s in zip(threads, batch):
                one = client.post("/v1/summarize", json=t)
                assert one.status_code == 200 and one.json()["summary"] == s
                assert s.strip() and "<|im_start|>" not in s and "Summarize" not in s


def test_serve_overrides_outside_serve_change_decoding(model_dir):
    """`threadsum serve --model M eval.generation.max_new_tokens=3` decodes with 3 new tokens: the
    model's saved config plus the command line's overrides (never silently the saved one alone)."""
    from threadsum.serve.app import load_service

    saved = load_service(str(model_dir), ServeConfig()).summarizer.cfg.eval.generation
    service = load_service(str(model_dir), ServeConfig(), ["eval.generation.max_new_tokens=3",
                                                           "eval.generation.num_beams=1", "serve.max_batch_size=2"])
    gen = service.summarizer.cfg.eval.generation
    assert (gen.max_new_tokens, gen.num_beams) == (3, 1) != (saved.max_new_tokens, saved.num_beams)
    out = service.summarizer.summarize_detailed([sample_thread(0)])[0].summary
    assert 0 < len(service.summarizer.tokenizer(out, add_special_tokens=False)["input_ids"]) <= 3
    with pytest.raises(ConfigError, match="eval.generation.num_beams"):
        load_service(str(model_dir), ServeConfig(), ["eval.generation.num_beams=0"])
    before = torch.get_num_threads()
    try:
        load_service(str(model_dir), ServeConfig(), ["inference.threads=1"])
        assert torch.get_num_threads() == 1  # the torch engine's CPU threads, as for ctranslate2
    finally:
        torch.set_num_threads(before)
