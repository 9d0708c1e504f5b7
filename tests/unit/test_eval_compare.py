"""`threadsum runs compare` on synthetic run folders written in the exact layout train and evaluate use."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from threadsum.cli import app
from threadsum.config import Config
from threadsum.evaluate import compare as C
from threadsum.evaluate import metrics as M

runner = CliRunner()

NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"]
TOPICS = ["budget review", "launch plan", "hiring", "server migration", "quarterly report", "offsite"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def _threads(n: int = 12) -> list[dict]:
    out = []
    for i in range(n):
        a, b = NAMES[i % 6], NAMES[(i + 1) % 6]
        topic, day = TOPICS[i % 6], DAYS[i % 5]
        source = (f"Subject: {topic}\nFrom: {a}\nTo: {b}\nHi {b}, the {topic} meeting moves to {day}. "
                  f"Please review before the call.\n---\nFrom: {b}\nTo: {a}\nThanks {a}. {day} is fine.")
        out.append({"thread_id": f"t{i:03d}", "subject": topic, "source": source, "first_email": source,
                    "summary": f"{a} moved the {topic} meeting to {day}; {b} agreed.", "source_tokens": 40})
    return out


def _config(prepared: Path, **model) -> dict:
    cfg = Config().to_dict()
    cfg["data"]["prepared_dir"] = str(prepared)
    cfg["model"].update({"init": "random", "name_or_path": None, **model})
    cfg["model"]["tiny"].update({"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "vocab_size": 600,
                                 "max_position_embeddings": 512})
    cfg["track"]["tracking_uri"] = "none"
    return cfg


def make_prepared(root: Path, threads: list[dict], split: str = "test") -> Path:
    """Only the part of a prepared folder compare reads: threads/<split>.jsonl."""
    (root / "threads").mkdir(parents=True, exist_ok=True)
    with (root / "threads" / f"{split}.jsonl").open("w") as fh:
        for t in threads:
            fh.write(json.dumps(t) + "\n")
    return root


def make_run(root: Path, name: str, threads: list[dict], predictions: list[str], *, split: str = "test",
             config: dict | None = None, grounding: bool = True, seconds: float = 120.0, tokens_per_s: float = 900.0,
             n_params: int = 265_600, n_trainable: int = 265_600, peak: float = 0.61, device: str = "cpu") -> Path:
    """A training output folder with eval-<split>/ as `threadsum train` + `threadsum evaluate` write them."""
    import yaml

    run = root / name
    out = run / f"eval-{split}"
    (run / "model").mkdir(parents=True)
    out.mkdir(parents=True)
    refs = [t["summary"] for t in threads]
    scores = M.rouge_scores(predictions, refs)
    base = M.baseline_predictions(threads, k=3)
    from threadsum.evaluate.run import grounding as check

    ground, claims = check(threads, {"model": predictions, **base, "reference": refs})
    metrics = {
        "model_dir": str(run / "model"), "output_dir": str(out), "split": split, "n_threads": len(threads),
        "model": M.summarize_scores(scores, 200, 0),
        "baselines": {k: M.summarize_scores(M.rouge_scores(v, refs), 200, 0) for k, v in base.items()},
        "lengths": {}, "empty_predictions": 0,
        "speed": {"seconds": 1.0, "threads_per_s": len(threads), "generated_tokens_per_s": 100.0},
        "engine": "torch", "device": "cpu", "dtype": "float32", "generation": {}, "bootstrap_samples": 200, "lead_k": 3,
    }
    if grounding:
        metrics["grounding"] = ground
    (out / "metrics.json").write_text(json.dumps(metrics))
    with (out / "predictions.jsonl").open("w") as fh:
        for i, t in enumerate(threads):
            fh.write(json.dumps({"thread_id": t["thread_id"], "reference": refs[i], "prediction": predictions[i],
                                 "rougeL": round(float(scores["rougeL"][i]), 6), "source_tokens": 40,
                                 "prediction_tokens": 12,
                                 "unsupported_claims": [c.to_dict() for c in claims["model"][i] if not c.supported]}) + "\n")
    cfg = config or _config(root / "prepared")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "run.json").write_text(json.dumps({
        "kind": "train", "status": "FINISHED", "last_step": 40, "tags": {"device": device},
        "params": {"n_params": n_params, "n_trainable_params": n_trainable},
        "summary": {"train_seconds": seconds, "real_tokens_per_s": tokens_per_s, "peak_mem_gb": peak, "steps": 40,
                    "n_params": n_params, "n_trainable_params": n_trainable,
                    "eval": {split: {"rougeL": metrics["model"]["rougeL"]["mean"], "output_dir": str(out)}}},
    }))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 40, "loss": 2.0, "tokens_per_s": tokens_per_s,
                                                   "peak_mem_gb": peak, "train_seconds": seconds}) + "\n")
    return run


@pytest.fixture
def two_runs(tmp_path):
    threads = _threads()
    make_prepared(tmp_path / "prepared", threads)
    weak = ["The meeting is about something." for _ in threads]
    strong = [t["summary"] for t in threads]  # B writes the references: clearly better on every thread
    a = make_run(tmp_path, "bart", threads, weak, seconds=120.0, tokens_per_s=900.0)
    b = make_run(tmp_path, "llm", threads, strong, seconds=300.0, tokens_per_s=400.0, n_params=1_000_000,
                 n_trainable=50_000, peak=1.5,
                 config=_config(tmp_path / "prepared", family="causal"))
    return tmp_path, threads, a, b


def test_table_rows_from_the_recorded_files(two_runs):
    root, threads, a, b = two_runs
    table = C.compare_runs([a, b], root / "cmp", latency_threads=0)
    assert table["n_threads"] == len(threads) and table["split"] == "test" and table["reference_run"] == "bart"
    ra, rb = table["runs"]
    assert (ra["family"], rb["family"]) == ("seq2seq", "causal")  # config default 'auto' -> tiny bart; explicit causal
    stored = json.loads((a / "eval-test" / "metrics.json").read_text())
    assert ra["rouge"]["rougeL"] == stored["model"]["rougeL"]  # the CIs evaluate reported, not new ones
    assert rb["rouge"]["rouge1"]["mean"] == pytest.approx(1.0)
    assert ra["vs_reference"] is None
    assert rb["training"] == {"trainable_params": 50_000, "total_params": 1_000_000, "train_seconds": 300.0, "steps": 40,
                              "tokens_per_s": 400.0, "peak_memory_gb": 1.5, "memory_kind": "peak RSS", "hardware": "cpu"}
    assert ra["grounding"]["source"] == "metrics.json"
    assert ra["grounding"]["flagged_share"] == stored["grounding"]["model"]["flagged_share"]
    assert ra["cost"]["instance"] == "ml.g5.xlarge" and ra["cost"]["usd_per_epoch"] > 0, ra["cost"]
    assert ra["speed"] is None and "--latency-threads 0" in ra["notes"]["speed"]
    assert [x["label"] for x in table["baselines"]] == ["lead-3"]
    assert table["baselines"][0]["rouge"]["rougeL"] == stored["baselines"]["lead3"]["rougeL"]

    md = (root / "cmp" / "compare.md").read_text()
    for row in ("ROUGE-L F1 x100 (95% CI)", "ROUGE-L minus bart (95% CI, p)", "summaries with an unsupported claim",
                "claims per summary", "trained / total parameters", "training tokens/s", "peak training memory",
                "planner $ per epoch on ml.g5.xlarge", "latency, batch 1", "| | bart | llm | lead-3 |"):
        assert row in md, row
    assert "50.0k / 1.0M" in md and "5.0 min (40 steps)" in md
    assert json.loads((root / "cmp" / "compare.json").read_text())["runs"][1]["label"] == "llm"
    assert (root / "cmp" / "compare.png").stat().st_size > 1000


def test_paired_bootstrap_against_the_first_run_has_the_right_sign(two_runs):
    root, threads, a, b = two_runs
    forward = C.compare_runs([a, b], root / "ab", latency_threads=0)["runs"][1]["vs_reference"]
    backward = C.compare_runs([b, a], root / "ba", latency_threads=0)["runs"][1]["vs_reference"]
    for k in M.ROUGE_KEYS:
        d = forward[k]
        assert d["diff"] > 0.3 and d["ci95"][0] > 0 and d["p"] < 0.01 and d["n"] == len(threads), (k, d)
        assert backward[k]["diff"] == pytest.approx(-d["diff"]) and backward[k]["ci95"][1] < 0
    # the difference is the difference of the two runs' means over the same threads
    ma = json.loads((a / "eval-test" / "metrics.json").read_text())["model"]["rougeL"]["mean"]
    assert forward["rougeL"]["diff"] == pytest.approx(1.0 - ma)
    md = (root / "ab" / "compare.md").read_text()
    assert "p<0.005" in md  # no resample of 200 crossed 0


def test_cli_refuses_runs_scored_on_different_threads(tmp_path):
    threads = _threads(12)
    other = _threads(12)[:10] + [{**t, "thread_id": f"x{i}"} for i, t in enumerate(_threads(12)[10:])]
    a = make_run(tmp_path, "bart", threads, [t["summary"] for t in threads])
    b = make_run(tmp_path, "llm", other, [t["summary"] for t in other])
    res = runner.invoke(app, ["runs", "compare", str(a), str(b), "--latency-threads", "0", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2, res.output
    msg = " ".join(res.output.split())
    assert "different test threads" in msg and "4 thread ids differ" in msg, msg
    assert "'t010' is only in bart" in msg and "same prepared split" in msg, msg
    assert not (tmp_path / "c").exists()


def test_refuses_same_ids_with_other_references_and_other_splits(tmp_path):
    threads = _threads(6)
    changed = [{**t, "summary": t["summary"] + " Extra."} if i == 2 else t for i, t in enumerate(threads)]
    a = C.load_run(make_run(tmp_path, "a", threads, ["x"] * 6))
    b = C.load_run(make_run(tmp_path, "b", changed, ["x"] * 6))
    with pytest.raises(C.CompareError, match=r"1 different reference summaries \(e\.g\. thread 't002'\)"):
        C.check_same_threads([a, b])
    v = C.load_run(make_run(tmp_path, "v", threads, ["x"] * 6, split="validation"), split="validation")
    with pytest.raises(C.CompareError, match="split 'validation' but a on 'test'"):
        C.check_same_threads([a, v])
    assert C.check_same_threads([a, a]) == [t["thread_id"] for t in threads]


def test_cli_names_the_missing_evaluation(tmp_path):
    threads = _threads(4)
    a = make_run(tmp_path, "bart", threads, ["x"] * 4)
    bare = tmp_path / "llm"
    (bare / "model").mkdir(parents=True)
    (bare / "config.yaml").write_text("name: llm\n")
    res = runner.invoke(app, ["runs", "compare", str(a), str(bare), "--latency-threads", "0"])
    assert res.exit_code == 2, res.output
    msg = " ".join(res.output.split())
    assert "no evaluation of split 'test'" in msg and f"run `threadsum evaluate -c {bare / 'config.yaml'}" in msg, msg
    res = runner.invoke(app, ["runs", "compare", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no folder" in res.output
    # an evaluation of another split is pointed out
    v = make_run(tmp_path, "val", threads, ["x"] * 4, split="validation")
    with pytest.raises(C.CompareError, match="it has eval-validation: pass --split validation"):
        C.find_eval_dir(v, "test")


def test_cli_rejects_an_unknown_instance(two_runs):
    root, _, a, b = two_runs
    res = runner.invoke(app, ["runs", "compare", str(a), str(b), "--instance", "ml.nope.xlarge", "--latency-threads", "0"])
    assert res.exit_code == 2 and "ml.nope.xlarge" in res.output and "ml.g5.xlarge" in res.output


def test_cli_prints_the_table_and_writes_the_files(two_runs):
    root, _, a, b = two_runs
    res = runner.invoke(app, ["runs", "compare", str(a), str(b), "--latency-threads", "0", "--instance", "ml.g5.2xlarge"])
    assert res.exit_code == 0, res.output
    assert "| | bart | llm | lead-3 |" in res.output and "planner $ per epoch on ml.g5.2xlarge" in res.output
    assert (root / "compare-test" / "compare.md").exists()  # default: beside the first run


def test_grounding_without_stored_figures(tmp_path):
    threads = _threads(6)
    preds = ["Alice moved the meeting to Monday; Zed agreed."] * 6
    make_prepared(tmp_path / "prepared", threads)
    run = C.load_run(make_run(tmp_path, "a", threads, preds, grounding=False))
    ids = C.check_same_threads([run])
    records, why = C.prepared_threads(run, ids)
    assert why is None
    checked = C.grounding_figures(run, records)
    assert checked["source"] == "checked now" and checked["claims_per_summary"] > 0 and checked["flagged_share"] == 1.0
    # without the prepared threads: the share from predictions.jsonl, claims per summary n/a with the reason
    stored_only = C.grounding_figures(run, None)
    assert stored_only["flagged_share"] == 1.0 and stored_only["claims_per_summary"] is None
    md = C.render_markdown(C.build_table([run], ids, grounding=[stored_only]))
    assert "n/a (1)" in md and "claims per summary: not in metrics.json" in md
    (tmp_path / "prepared" / "threads" / "test.jsonl").unlink()
    assert C.prepared_threads(run, ids)[1].startswith("the prepared threads")


def test_model_family_sources(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))  # is_encoder_decoder absent = False
    assert C.model_family({"model": {"family": "auto"}}, tmp_path) == "causal"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bart", "is_encoder_decoder": True}))
    assert C.model_family({"model": {"family": "auto"}}, tmp_path) == "seq2seq"
    assert C.model_family({"model": {"family": "causal"}}, tmp_path) == "causal"
    (tmp_path / "config.json").write_text(json.dumps({"add_source_bos": False}))  # a CTranslate2 export's config
    assert C.model_family({"model": {"init": "random", "tiny": {"architecture": "qwen2"}}}, tmp_path) == "causal"
    assert C.model_family({}, tmp_path) is None


def test_unique_labels():
    assert C.unique_labels(["out/a/run", "out/b/run", "x/c"]) == ["a/run", "b/run", "c"]
    assert C.unique_labels(["x/c", "x/c"]) == ["x/c", "x/c (2)"]
