"""Prometheus /metrics, the drain's admission rule and the heap trimmer, on the real service
(uvicorn on 127.0.0.1 in a thread, a tiny random model). The SIGTERM drain of the real process is
in test_serve_drain.py."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")

from threadsum.config import ServeConfig  # noqa: E402
from threadsum.inference.summarizer import Summarizer  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir, sample_thread  # noqa: E402
from threadsum import heap  # noqa: E402
from threadsum.serve import memory  # noqa: E402
from threadsum.serve.app import create_app, serve_in_thread  # noqa: E402


@pytest.fixture(scope="module")
def summarizer(tmp_path_factory):
    torch.set_num_threads(1)
    return Summarizer.from_pretrained(str(build_tiny_model_dir(tmp_path_factory.mktemp("metrics-model"))), device="cpu")


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}, read by prometheus-client's parser."""
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in parser.text_string_to_metric_families(r.text) for s in fam.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


UNGROUNDED = "Tana Jones will pay $5,000 on Friday."
"""A summary whose amount is in no sample thread: each one carries an unsupported money claim."""


def test_metrics_move_as_requests_are_served(summarizer, monkeypatch):
    monkeypatch.setattr(summarizer, "generate", lambda texts, batch_size=None: [UNGROUNDED] * len(texts))
    with serve_in_thread(create_app(summarizer, ServeConfig(max_emails=5))) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        before = scrape(client)
        assert all(name.startswith("threadsum_") for name, _ in before)
        assert value(before, "threadsum_ready") == 1 and value(before, "threadsum_draining") == 0
        assert value(before, "threadsum_process_resident_memory_bytes") > 0
        info = [labels for (name, labels) in before if name == "threadsum_info"]
        assert info and ("engine", "torch") in info[0] and any(k == "allocator" for k, _ in info[0])

        one = client.post("/v1/summarize", json=sample_thread(1))
        assert one.status_code == 200
        batch = {"threads": [sample_thread(2), sample_thread(3), sample_thread(4, n_emails=9)]}
        r = client.post("/v1/summarize/batch", json=batch)
        assert [x["status"] for x in r.json()["results"]] == [200, 200, 422]
        answered = [one.json()] + r.json()["results"][:2]
        assert client.post("/v1/summarize", json={"emails": []}).status_code == 422
        assert client.get("/no/such/path").status_code == 404
        after = scrape(client)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("threadsum_requests_total", endpoint="/v1/summarize", method="POST", status="200") == 1
    assert moved("threadsum_requests_total", endpoint="/v1/summarize", method="POST", status="422") == 1
    assert moved("threadsum_requests_total", endpoint="/v1/summarize/batch", method="POST", status="200") == 1
    assert moved("threadsum_requests_total", endpoint="other", method="GET", status="404") == 1
    assert moved("threadsum_request_duration_seconds_count", endpoint="/v1/summarize") == 2
    # per thread: 3 summaries; the batch's over-long thread is a 422 item, never generated
    assert moved("threadsum_threads_total", status="200") == 3
    assert moved("threadsum_threads_total", status="422") == 1
    assert moved("threadsum_summaries_total") == 3
    assert moved("threadsum_queue_wait_seconds_count") == 3
    assert moved("threadsum_batch_size_sum") == 3
    batches = moved("threadsum_batch_size_count")
    assert 2 <= batches <= 3 and moved("threadsum_inference_duration_seconds_count") == batches
    # the claims counted are exactly those the answers carry
    kinds: dict[tuple[str, str], int] = {}
    for a in answered:
        for c in a["claims"]:
            key = (c["kind"], "true" if c["supported"] else "false")
            kinds[key] = kinds.get(key, 0) + 1
    for (kind, supported), n in kinds.items():
        assert moved("threadsum_claims_total", kind=kind, supported=supported) == n
    assert kinds.get(("money", "false")) == 3
    assert moved("threadsum_summaries_with_unsupported_claims_total") == 3
    assert value(after, "threadsum_queue_depth") == 0 and value(after, "threadsum_threads_pending") == 0
    # the scrape itself is being handled while it renders
    assert value(after, "threadsum_requests_in_flight") == 1


def test_metrics_need_the_key_and_registries_are_per_app(summarizer):
    keyed = create_app(summarizer, ServeConfig(api_key="k3y"))
    other = create_app(summarizer, ServeConfig())
    assert keyed.state.service.metrics.registry is not other.state.service.metrics.registry
    with serve_in_thread(keyed) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/v1/summarize", json=sample_thread(5), headers={"X-API-Key": "k3y"}).status_code == 200
        samples = scrape(client, **{"X-API-Key": "k3y"})
        assert value(samples, "threadsum_requests_total", endpoint="/metrics", method="GET", status="401") == 2
        assert value(samples, "threadsum_summaries_total") == 1
        assert client.get("/healthz").status_code == 200  # health checks stay public
    # the other app's registry saw none of it
    assert other.state.service.metrics.summaries._value.get() == 0


def test_a_draining_service_refuses_new_work_but_answers_probes(summarizer):
    app = create_app(summarizer, ServeConfig())
    service = app.state.service
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/v1/summarize", json=sample_thread(6)).status_code == 200
        service.begin_drain()
        r = client.post("/v1/summarize", json=sample_thread(7))
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
        assert "shutting down" in r.json()["detail"]
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/status").json()["status"] == "draining"
        samples = scrape(client)
        assert value(samples, "threadsum_draining") == 1 and value(samples, "threadsum_ready") == 0
        assert value(samples, "threadsum_requests_total", endpoint="/v1/summarize", method="POST", status="503") == 1
        assert service.refused_while_draining == 1
    assert service.idle


def test_heap_trimmer_is_rate_limited_and_glibc_only(monkeypatch):
    if memory.glibc_version() is None:
        assert not memory.HeapTrimmer(1.0).enabled and memory.malloc_trim() is False
        return
    assert memory.active_allocator() in ("glibc", "jemalloc", "tcmalloc")
    trimmer = memory.HeapTrimmer(3600.0)
    if memory.active_allocator() != "glibc":  # a preloaded allocator returns memory itself
        assert not trimmer.enabled and trimmer.maybe_trim() is None
        return
    assert trimmer.enabled
    assert trimmer.maybe_trim() is not None
    assert trimmer.maybe_trim() is None  # within the interval
    assert trimmer.trims == 1 and trimmer.describe()["malloc_trim"] is True
    assert memory.HeapTrimmer(0).maybe_trim() is None  # 0: never
    monkeypatch.setattr(heap, "active_allocator", lambda: "jemalloc")  # the libc calls' owner decides
    assert not memory.HeapTrimmer(1.0).enabled
    assert heap.reuse_freed_memory() == "allocator jemalloc"


def test_heap_trimmer_trims_only_after_growth(monkeypatch):
    """With a growth gate a trim is made only once RSS grew by more than growth_mib since the last
    one (a trim costs page faults in the batches after it); the first trim sets the baseline."""
    monkeypatch.setattr(memory, "trim_supported", lambda: True)
    calls = []
    monkeypatch.setattr(memory, "malloc_trim", lambda: calls.append(1) or True)
    readings = {"now": 500 * 2**20}
    monkeypatch.setattr(memory, "resident_bytes", lambda: readings["now"])
    trimmer = memory.HeapTrimmer(1e-9, growth_mib=32)
    assert trimmer.maybe_trim() is not None  # the first trim: baseline 500 MiB
    readings["now"] = 530 * 2**20
    assert trimmer.maybe_trim() is None  # +30 MiB: not due
    readings["now"] = 533 * 2**20
    assert trimmer.maybe_trim() is not None  # +33 MiB: due; baseline 533
    assert trimmer.maybe_trim() is None
    assert (len(calls), trimmer.trims, trimmer.checks) == (2, 2, 4)
    ungated = memory.HeapTrimmer(1e-9)
    assert all(ungated.maybe_trim() is not None for _ in range(3))  # 0: every interval
