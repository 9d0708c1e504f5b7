"""One decoding rule everywhere: evaluate, the Summarizer (CLI and service), validation ROUGE during
training and the exported model's own ``generate()`` give identical summaries for the same threads."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

from train_fixture import make_prepared, tiny_config  # noqa: E402

from threadsum.evaluate.run import evaluate  # noqa: E402
from threadsum.generation import length_sorted_batches  # noqa: E402
from threadsum.inference.summarizer import Summarizer  # noqa: E402
from threadsum.train.evaluation import validation_summaries  # noqa: E402
from threadsum.train.loop import train  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-eq")
    prepared = make_prepared(root / "prepared", n_train=24, n_val=8, n_test=12)
    cfg = tiny_config(prepared, root / "run", max_steps=8, checkpoint_every_steps=0)
    # every decoding setting away from its default, so a path that drops one shows up
    g = cfg.eval.generation
    g.num_beams, g.no_repeat_ngram_size, g.length_penalty = 3, 2, 1.4
    g.min_new_tokens, g.max_new_tokens, g.batch_size = 6, 20, 5
    result = train(cfg)
    assert result["status"] == "finished"
    return cfg, prepared, result["model_dir"]


def _records(prepared, split):
    return [json.loads(line) for line in (prepared / "threads" / f"{split}.jsonl").read_text().splitlines()]


def test_evaluate_summarizer_and_exported_generate_agree(trained, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    cfg, prepared, model_dir = trained
    evaluate(cfg, model_dir, split="test", output_dir=str(tmp_path / "eval"))
    by_id = {p["thread_id"]: p["prediction"] for p in map(json.loads, (tmp_path / "eval" / "predictions.jsonl").open())}
    records = _records(prepared, "test")
    expected = [by_id[r["thread_id"]] for r in records]
    assert len(set(expected)) > 1, "a model that writes one summary for every thread cannot show a difference"

    summarizer = Summarizer.from_pretrained(model_dir, device="cpu")
    assert summarizer.generate([r["source"] for r in records]) == expected

    # plain Hugging Face code: the folder's generation_config.json carries the same settings
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = [tok(r["source"])["input_ids"] for r in records]
    plain = [""] * len(records)
    for batch in length_sorted_batches([len(x) for x in ids], cfg.eval.generation.batch_size):
        enc = tok.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc)
        for i, text in zip(batch, tok.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)):
            plain[i] = text.strip()
    assert plain == expected


def test_validation_rouge_decodes_as_evaluate_does(trained, tmp_path):
    """The summaries validation ROUGE scores during training are the ones evaluate writes."""
    from datasets import load_from_disk
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    cfg, prepared, model_dir = trained
    evaluate(cfg, model_dir, split="validation", output_dir=str(tmp_path / "eval-val"))
    by_id = {p["thread_id"]: p["prediction"]
             for p in map(json.loads, (tmp_path / "eval-val" / "predictions.jsonl").open())}
    ds = load_from_disk(str(prepared / "tokenized"))["validation"]
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model.train()  # as during training: validation_summaries switches to eval mode and back
    got, _ = validation_summaries(model, tok, ds, len(ds), cfg, torch.device("cpu"))
    assert got == [by_id[t] for t in ds["thread_id"]]
    assert model.training
