"""SIGTERM under load: `threadsum serve` (a real process, uvicorn on 127.0.0.1, a tiny model)
finishes every accepted request, refuses new work cleanly, and exits 0.

Each client opens a new connection per request, so a transport error tells which side it fell on:
a refused connection (``ConnectError``) never reached the service; any other error after the
request was sent would be an accepted request lost, and fails the test. A client stops after its
first refusal, as a client behind a load balancer would move to another replica.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from threadsum.inference.tiny import build_tiny_model_dir, sample_thread  # noqa: E402

CLIENTS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_sigterm_drains_accepted_work_and_exits_0(tmp_path):
    # summaries of exactly 48 tokens at batch 2: a queue builds up behind the generation thread
    model = build_tiny_model_dir(tmp_path / "m", overrides={"eval.generation.min_new_tokens": 48,
                                                             "eval.generation.max_new_tokens": 48})
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "threadsum", "serve", "--model", str(model), "--port", str(port),
                             "serve.max_batch_size=2", "serve.drain_timeout_s=20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    outcomes: list[tuple[str, float]] = []  # (outcome, time it came back)
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = httpx.post(url + "/v1/summarize", json=sample_thread(100 * k + i), timeout=30)
                if r.status_code == 200 and r.json()["summary"]:
                    outcome = "ok"
                elif r.status_code == 503 and r.headers.get("retry-after"):
                    outcome = "refused"
                else:
                    outcome = f"bad {r.status_code}"
            except httpx.ConnectError:
                outcome = "refused"  # the listener was closed: never accepted
            except httpx.TransportError as exc:
                outcome = f"lost {type(exc).__name__}"
            with lock:
                outcomes.append((outcome, time.monotonic()))
            if outcome != "ok":
                return

    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "threadsum serve did not become ready"
            time.sleep(0.2)
        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        while sum(o == "ok" for o, _ in list(outcomes)) < 2 * CLIENTS:  # under load
            assert proc.poll() is None
            time.sleep(0.05)
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=25)
        stop.set()
        out, _ = proc.communicate(timeout=25)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0, out[-3000:]
    kinds = {o for o, _ in outcomes}
    assert kinds <= {"ok", "refused"}, [o for o, _ in outcomes if o not in ("ok", "refused")]
    # accepted work was finished after the signal, and every client was refused once, cleanly
    assert sum(o == "ok" and t > sent_at for o, t in outcomes) >= 1, out[-3000:]
    assert sum(o == "refused" for o, _ in outcomes) == CLIENTS
    assert "draining" in out and "drained in" in out, out[-3000:]
