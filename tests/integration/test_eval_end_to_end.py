"""evaluate() end to end on a tiny random BART: files, scores, baselines, tracking, flat memory."""
from __future__ import annotations

import gc
import json
import os
import random
import resource
import shutil
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from threadsum.config import Config, config_from_dict  # noqa: E402
from threadsum.evaluate.run import evaluate, evaluate_command, generate_batches  # noqa: E402
from threadsum.model import build_random_model, train_tokenizer  # noqa: E402
from threadsum.track import RunTracker  # noqa: E402

WORDS = ("gas contract deal price meeting schedule report review budget invoice power trade desk "
         "credit legal approval transfer pipeline storage capacity volume counterparty signed draft").split()
NAMES = ["Tana Jones", "Sara Shackleton", "Jeff Dasovich", "Kay Mann", "Mark Taylor"]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(5, 12))]
    return " ".join(words).capitalize() + "."


def _thread(i: int, rng: random.Random) -> dict:
    subject = f"RE: {rng.choice(WORDS)} {rng.choice(WORDS)} {i}"
    emails = []
    for j in range(rng.randint(2, 4)):
        body = " ".join(_sentence(rng) for _ in range(rng.randint(2, 2 + i % 6)))
        emails.append(f"From: {rng.choice(NAMES)}\nTo: {rng.choice(NAMES)}\nDate: 2002-01-{j + 10} 10:00:00\n{body}")
    source = f"Subject: {subject}\n" + "\n---\n".join(emails)
    summary = "The email thread discusses " + " ".join(_sentence(rng) for _ in range(2))
    return {"thread_id": str(i), "subject": subject, "source": source, "summary": summary,
            "first_email": emails[0], "n_emails": len(emails), "source_tokens": 0, "truncated": False}


def build_prepared(root: Path, n_test: int = 12, n_train: int = 8) -> tuple[Path, object]:
    """A prepared folder per threadsum/data/prepared.py with a freshly trained tokenizer."""
    rng = random.Random(0)
    splits = {"train": [_thread(i, rng) for i in range(n_train)],
              "validation": [_thread(100 + i, rng) for i in range(2)],
              "test": [_thread(200 + i, rng) for i in range(n_test)]}
    texts = [t["source"] + "\n" + t["summary"] for ts in splits.values() for t in ts]
    tok = train_tokenizer(texts, vocab_size=600, out_dir=root / "tokenizer")
    (root / "threads").mkdir(parents=True)
    data = {}
    for split, threads in splits.items():
        cols = {"thread_id": [], "input_ids": [], "labels": []}
        for t in threads:
            ids = tok(t["source"], truncation=True, max_length=256)["input_ids"]
            t["source_tokens"] = len(ids)
            cols["thread_id"].append(t["thread_id"])
            cols["input_ids"].append(ids)
            cols["labels"].append(tok(t["summary"], truncation=True, max_length=64)["input_ids"])
        data[split] = datasets.Dataset.from_dict(cols)
        with (root / "threads" / f"{split}.jsonl").open("w") as fh:
            for t in threads:
                fh.write(json.dumps(t) + "\n")
    datasets.DatasetDict(data).save_to_disk(str(root / "tokenized"))
    return root, tok


def build_model_dir(run_dir: Path, tok, cfg: Config) -> Path:
    torch.manual_seed(0)
    model = build_random_model(cfg.model, tok)
    model_dir = run_dir / "model"
    model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    (model_dir / "README.md").write_text("# tiny test model\n")
    return model_dir


def tiny_cfg(prepared: Path, **track) -> Config:
    return config_from_dict({
        "name": "tiny-eval",
        "data": {"prepared_dir": str(prepared)},
        "model": {"init": "random", "tiny": {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
                                             "attention_heads": 2, "ffn_dim": 64, "max_position_embeddings": 512}},
        "eval": {"bootstrap_samples": 200, "device": "cpu",
                 "generation": {"num_beams": 2, "min_new_tokens": 4, "max_new_tokens": 12, "batch_size": 4}},
        "track": {"tracking_uri": "none", **track},
    })


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # on a shared 2-core machine two spinning intra-op threads make tiny-model generation ~8x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    prepared, tok = build_prepared(root / "prepared")
    cfg = tiny_cfg(prepared)
    model_dir = build_model_dir(root / "run", tok, cfg)
    return root, cfg, model_dir, tok


def test_evaluate_writes_predictions_metrics_and_report(world, capsys):
    root, cfg, model_dir, _ = world
    # a training metrics file beside the model dir gives the loss-curve plot
    (model_dir.parent / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "loss": 5.0 - s / 10, **({"val_loss": 5.2 - s / 12} if s % 4 == 0 else {})})
                  for s in range(1, 13)) + "\n{\"step\": 13, \"lo")  # last line cut, as after a crash
    result = evaluate_command(cfg, str(model_dir), split="test", output_dir=None)
    out = model_dir.parent / "eval-test"  # default: beside the model dir

    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    test_ids = [json.loads(line)["thread_id"] for line in (Path(cfg.data.prepared_dir) / "threads" / "test.jsonl").read_text().splitlines()]
    assert [p["thread_id"] for p in preds] == test_ids  # dataset order, not the length-sorted order
    assert all(p["reference"].startswith("The email thread discusses") for p in preds)
    assert all(isinstance(p["prediction"], str) for p in preds)
    assert sum(1 for p in preds if p["prediction"].strip()) >= len(preds) - 1
    assert all(4 <= p["prediction_tokens"] <= 12 for p in preds)  # min/max new tokens honoured

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_threads"] == 12 == result["n_threads"] and metrics["output_dir"] == str(out)
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        s = metrics["model"][k]
        assert 0.0 <= s["ci95"][0] <= s["mean"] <= s["ci95"][1] <= 1.0
    assert set(metrics["baselines"]) == {"lead3", "first_email", "subject"}
    # the references share the thread's vocabulary: lead-3 beats a random model and the subject line
    assert metrics["baselines"]["lead3"]["rouge1"]["mean"] > metrics["baselines"]["subject"]["rouge1"]["mean"]
    assert metrics["speed"]["threads_per_s"] > 0
    assert metrics["lengths"]["prediction_tokens"]["max"] <= 12

    # grounding next to ROUGE: the extractive baselines copy the thread, so nothing in them is invented
    ground = metrics["grounding"]
    assert set(ground) == {"model", "lead3", "first_email", "subject", "reference"}
    assert all(g["n"] == 12 for g in ground.values())
    assert ground["lead3"]["flagged_share"] == 0.0 and ground["first_email"]["flagged_share"] == 0.0
    assert ground["lead3"]["claims_per_summary"] > 0
    assert all(isinstance(p["unsupported_claims"], list) for p in preds)

    report = (out / "report.md").read_text()
    assert "| **model** |" in report and "baseline: lead3" in report and "threads/s" in report
    assert "## Grounding" in report and "| baseline: lead3 | 0.0% |" in report
    for png in ("rouge_by_source_length.png", "lengths.png", "loss_curves.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in report
    table = capsys.readouterr().out
    assert "first_email" in table and "lead3" in table and "model vs baselines" in table
    assert "grounding, summaries with an unsupported claim" in table
    # no run.json beside the model: the evaluation is a run of its own (JSON record, MLflow off)
    rec = json.loads((out / "run.json").read_text())
    assert rec["kind"] == "evaluate" and rec["status"] == "FINISHED"
    assert rec["summary"]["eval"]["test"]["n_threads"] == 12


def test_evaluate_rejects_data_from_another_tokenizer(world, tmp_path):
    root, cfg, model_dir, _ = world
    from threadsum.data.tokenizer_check import TokenizerMismatchError

    other, _ = build_prepared(tmp_path / "other", n_test=2, n_train=2)  # its tokenizer saw other texts
    bad = cfg.model_copy(update={"data": cfg.data.model_copy(update={"prepared_dir": str(other)})})
    with pytest.raises(TokenizerMismatchError, match=f"tokenized with the tokenizer in {other / 'tokenizer'}.*"
                                                     f"the tokenizer of '{model_dir}'"):
        evaluate(bad, str(model_dir), split="test", output_dir=str(tmp_path / "e"))
    rec = json.loads((tmp_path / "e" / "run.json").read_text())
    assert rec["status"] == "FAILED" and rec["cause"].startswith("crashed: TokenizerMismatchError")


def test_evaluate_rejects_ids_beyond_a_tokenizerless_models_vocabulary(world, tmp_path):
    """A model folder without a tokenizer is read with the data's; ids it has no embedding for are refused."""
    root, cfg, model_dir, _ = world
    from threadsum.evaluate.run import EvaluationError

    bare = tmp_path / "run" / "model"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    model_dir = bare
    other, _ = build_prepared(tmp_path / "other", n_test=2, n_train=2)
    ds = datasets.load_from_disk(str(other / "tokenized"))
    big = ds["test"].map(lambda r: {"input_ids": r["input_ids"] + [99_999]})
    datasets.DatasetDict({"train": ds["train"], "validation": ds["validation"], "test": big}).save_to_disk(str(tmp_path / "tok2"))
    shutil.rmtree(other / "tokenized")
    shutil.move(str(tmp_path / "tok2"), str(other / "tokenized"))
    bad = cfg.model_copy(update={"data": cfg.data.model_copy(update={"prepared_dir": str(other)})})
    with pytest.raises(EvaluationError, match="different tokenizer"):
        evaluate(bad, str(model_dir), split="test", output_dir=str(tmp_path / "e"))
    rec = json.loads((tmp_path / "e" / "run.json").read_text())
    assert rec["status"] == "FAILED" and rec["cause"].startswith("crashed: EvaluationError")


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on torch's deprecated module attributes warns
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_generation_memory_stays_flat(world):
    """Many batches must not accumulate tensors (kept logits/scores) or grow peak RSS."""
    _, cfg, model_dir, tok = world
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval()
    # a wide vocabulary makes kept scores expensive: 4 beams x 4 rows x 12 steps x 20k x 4 B = 15 MB a batch
    model.resize_token_embeddings(20_000, mean_resizing=False)
    gen = cfg.eval.generation.model_copy(update={"num_beams": 4, "min_new_tokens": 12, "max_new_tokens": 12, "batch_size": 4})
    rng = random.Random(1)
    seqs = [[0] + [rng.randrange(5, len(tok)) for _ in range(rng.randint(20, 40))] + [2] for _ in range(40)]
    dev = torch.device("cpu")

    for _ in generate_batches(model, tok, seqs[:8], gen, dev):  # warm-up: allocator pools, peak
        pass
    before_tensors = _live_tensors()
    before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    n = 0
    for idx, texts, counts in (b[:3] for b in generate_batches(model, tok, seqs, gen, dev)):
        n += len(idx)
    after_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert n == 40
    assert _live_tensors() - before_tensors <= 2
    # 10 batches of kept scores would add ~150 MB (measured: +15 MB a batch); allow allocator noise
    assert (after_rss - before_rss) / 1024 < 60, f"peak RSS grew by {(after_rss - before_rss) / 1024:.0f} MB"


@pytest.mark.slow
def test_evaluation_lands_on_the_training_run_in_mlflow(world, tmp_path):
    """A model inside a run folder: eval metrics go onto that run (JSON and MLflow), status untouched."""
    pytest.importorskip("mlflow")
    root, cfg, model_dir, tok = world
    run_dir = tmp_path / "run"
    import shutil

    shutil.copytree(model_dir, run_dir / "model")
    tcfg = cfg.model_copy(update={"track": cfg.track.model_copy(update={"tracking_uri": ""})})  # default sqlite
    tracker = RunTracker(tcfg, run_dir, kind="train")
    tracker.start()
    tracker.log_metrics({"loss": 3.0}, step=7)
    tracker.finish("FINISHED", last_step=7, summary={"epochs": 1.0})
    run_id = tracker.run_id
    assert run_id and (run_dir / "mlflow.db").exists()

    evaluate(tcfg, str(run_dir / "model"), split="test")
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["status"] == "FINISHED" and rec["kind"] == "train"
    assert 0 <= rec["summary"]["eval"]["test"]["rougeL"] <= 1
    assert "test/rougeL" in rec["metrics"]
    assert not (run_dir / "eval-test" / "run.json").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(rec["mlflow"]["tracking_uri"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/rougeL"] == pytest.approx(rec["summary"]["eval"]["test"]["rougeL"])
    assert "test/baseline.lead3.rouge1" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.md", "metrics.json", "README.md", "lengths.png"} <= names


def test_missing_prepared_data_names_the_one_the_model_was_trained_on(world, tmp_path):
    _, cfg, model_dir, _ = world
    from threadsum.data.prepared import PreparedDataError

    (model_dir / "config.yaml").write_text(cfg.to_yaml())
    other = cfg.model_copy(update={"data": cfg.data.model_copy(update={"prepared_dir": str(tmp_path / "nope")})})
    with pytest.raises(PreparedDataError, match=f"data.prepared_dir={cfg.data.prepared_dir}"):
        evaluate(other, str(model_dir), split="test", output_dir=str(tmp_path / "e"))
