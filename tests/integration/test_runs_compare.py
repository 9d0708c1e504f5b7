"""`threadsum runs compare` end to end: a tiny BART run and a tiny decoder-only run, trained and
evaluated on the same threads (one split, prepared once per model's tokenizer), in one table."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("datasets")

from typer.testing import CliRunner  # noqa: E402

from threadsum.cli import app  # noqa: E402

from train_fixture import make_prepared, tiny_config  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # on a shared 2-core machine two spinning intra-op threads make tiny-model generation much slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_compare_two_trained_and_evaluated_runs(tmp_path):
    from threadsum.evaluate.run import evaluate
    from threadsum.train.loop import train

    prepared = make_prepared(tmp_path / "prepared", n_train=16, n_val=2, n_test=6)
    prepared_causal = make_prepared(tmp_path / "prepared-causal", n_train=16, n_val=2, n_test=6, family="causal")
    runs = []
    for name, steps, data, arch in (("short", 3, prepared, "bart"), ("longer", 12, prepared_causal, "llama")):
        cfg = tiny_config(data, tmp_path / name, architecture=arch, max_steps=steps, checkpoint_every_steps=0)
        cfg.eval.bootstrap_samples, cfg.eval.device = 200, "cpu"
        train(cfg)
        evaluate(cfg, str(tmp_path / name / "model"), "test")
        runs.append(tmp_path / name)

    # the short run also evaluated on part of the test threads (eval.max_threads), before any CLI call:
    # the CLI's log handler writes to the stream the runner replaces. run.json now records this
    # evaluation as the latest, but the run's own eval-test/ is what a comparison of the run folder reads
    cfg = tiny_config(prepared, tmp_path / "short", max_steps=3)
    cfg.eval.bootstrap_samples, cfg.eval.device, cfg.eval.max_threads = 50, "cpu", 4
    evaluate(cfg, str(tmp_path / "short" / "model"), "test", str(tmp_path / "short-part" / "eval-test"))

    res = CliRunner().invoke(app, ["runs", "compare", *map(str, runs), "--out", str(tmp_path / "cmp"),
                                   "--latency-threads", "2"])
    assert res.exit_code == 0, res.output
    print(res.output)
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert table["n_threads"] == 6 and table["reference_run"] == "short"
    short, longer = table["runs"]
    assert short["family"] == "seq2seq" and longer["family"] == "causal"
    for run in (short, longer):
        t = run["training"]
        assert t["trainable_params"] == t["total_params"] > 0 and t["train_seconds"] > 0 and t["tokens_per_s"] > 0
        assert t["peak_memory_gb"] > 0 and t["memory_kind"] == "peak RSS"
        assert run["cost"]["usd_per_epoch"] > 0, run["cost"]
        s = run["speed"]
        assert s["threads"] == 2 and s["latency_median_s"] > 0 and s["threads_per_s"] > 0 and s["batch_size"] == 8
        assert run["grounding"]["source"] == "metrics.json" and run["grounding"]["claims_per_summary"] is not None
    assert short["vs_reference"] is None
    stored = [json.loads((r / "eval-test" / "metrics.json").read_text())["model"]["rougeL"]["mean"] for r in runs]
    assert longer["vs_reference"]["rougeL"]["diff"] == pytest.approx(stored[1] - stored[0], abs=1e-9)
    assert "| | short | longer | lead-3 |" in res.output
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000

    # a run evaluated on other test threads is refused, naming the difference
    res = CliRunner().invoke(app, ["runs", "compare", str(runs[1]), str(tmp_path / "short-part" / "eval-test"),
                                   "--latency-threads", "0"])
    assert res.exit_code == 2, res.output
    assert "2 thread ids differ (2 only in longer, 0 only in short-part" in " ".join(res.output.split()), res.output
