"""Data prepared with one tokenizer is refused for a model with another: evaluate, sagemaker launch
(dry run) and the check `train` calls (threadsum.data.tokenizer_check), with exit 2 and a message
naming both tokenizers and the fix; matching data is accepted."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("datasets")

from threadsum.cli import app  # noqa: E402
from threadsum.config import load_config  # noqa: E402
from threadsum.data.prepare import prepare  # noqa: E402
from threadsum.data.prepared import PreparedDataError  # noqa: E402
from threadsum.data.synth import write_kaggle_csv  # noqa: E402
from threadsum.data.tokenizer_check import (  # noqa: E402
    TokenizerMismatchError,
    check_prepared_for_model,
)
from threadsum.inference.tiny import build_tiny_model_dir, sample_texts  # noqa: E402
from threadsum.model import train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "configs" / "tiny.yaml"
BART_LARGE_YAML = REPO / "configs" / "bart-large.yaml"
TINY_RECIPE_TOKENIZER = "trained byte-level BPE, vocab 800"
LAUNCH = ["sagemaker", "launch", "--dry-run", "--role", "arn:aws:iam::123456789012:role/SageMakerRole",
          "--s3-prefix", "s3://my-bucket/runs", "--region", "us-west-2", "--instance-type", "ml.g5.xlarge",
          "--job-name", "job-1"]
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder prepared by `prepare` with the tiny recipe (its own BPE), and tokenizers/models that differ."""
    root = tmp_path_factory.mktemp("tokmatch")
    write_kaggle_csv(root / "corpus", 30, seed=4)
    cfg = load_config(TINY_YAML, [f"data.source={root / 'corpus'}", f"data.prepared_dir={root / 'prepared'}",
                                  "data.max_source_tokens=128", "data.max_target_tokens=32",
                                  "model.tiny.vocab_size=800"])
    prepare(cfg)
    other_tok = root / "other-tokenizer"
    other_vocab = len(train_tokenizer(sample_texts(seed=1), 700, other_tok))
    same_tok = root / "same-tokenizer"
    shutil.copytree(root / "prepared" / "tokenizer", same_tok)
    other_model = build_tiny_model_dir(root / "other-model", seed=1)
    return {"root": root, "prepared": root / "prepared", "other_tok": other_tok, "same_tok": same_tok,
            "other_model": other_model, "other_vocab": other_vocab}


def test_prepare_records_the_tokenizer_and_saves_it_portably(world):
    info = json.loads((world["prepared"] / "prepare.json").read_text())
    assert info["tokenizer"]["source"] == TINY_RECIPE_TOKENIZER
    saved = json.loads((world["prepared"] / "tokenizer" / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert saved["model_max_length"] == 640  # configs/tiny.yaml: model.tiny.max_position_embeddings


def test_evaluate_refuses_a_model_with_another_tokenizer(world, tmp_path):
    res = runner.invoke(app, ["evaluate", "-c", str(TINY_YAML), "-m", str(world["other_model"]),
                              "-o", str(tmp_path / "eval"), f"data.prepared_dir={world['prepared']}",
                              "track.tracking_uri=none"])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())  # rich wraps long lines
    assert TINY_RECIPE_TOKENIZER in out and str(world["other_model"]) in out
    assert "Fix: point data.prepared_dir at the data the model was trained on" in out
    assert "Traceback" not in res.output
    assert not (tmp_path / "eval" / "predictions.jsonl").exists()


def test_launch_refuses_tiny_data_for_bart_large(world):
    """The reported case: a folder prepared by configs/tiny.yaml, launched with configs/bart-large.yaml.
    Offline, facebook/bart-large cannot be loaded here, so the recorded tokenizer name decides."""
    res = runner.invoke(app, [*LAUNCH, "-c", str(BART_LARGE_YAML), f"data.prepared_dir={world['prepared']}"])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert TINY_RECIPE_TOKENIZER in out and "'facebook/bart-large'" in out
    assert "threadsum prepare -c <this config> data.prepared_dir=<new folder>" in out
    assert '"TrainingJobName"' not in res.output  # no request printed


def test_launch_refuses_another_local_tokenizer_by_fingerprint(world):
    res = runner.invoke(app, [*LAUNCH, "-c", str(TINY_YAML), f"data.prepared_dir={world['prepared']}",
                              f"model.tokenizer={world['other_tok']}"])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert TINY_RECIPE_TOKENIZER in out and str(world["other_tok"]) in out and "fingerprint" in out
    assert "vocabulary 800" in out and f"vocabulary {world['other_vocab']}" in out


@pytest.mark.parametrize("extra", [[], ["model.tokenizer={same_tok}"]], ids=["random-init", "same-tokenizer-copy"])
def test_launch_accepts_data_prepared_for_the_model(world, extra):
    extra = [e.format(**world) for e in extra]
    res = runner.invoke(app, [*LAUNCH, "-c", str(TINY_YAML), f"data.prepared_dir={world['prepared']}", *extra])
    assert res.exit_code == 0, res.output
    assert '"TrainingJobName": "job-1"' in res.output


def test_the_check_train_calls(world):
    def cfg(*over):
        return load_config(None, [f"data.prepared_dir={world['prepared']}", *over])

    with pytest.raises(TokenizerMismatchError, match="facebook/bart-large"):
        check_prepared_for_model(cfg())  # the default model, facebook/bart-large
    with pytest.raises(TokenizerMismatchError, match="other-tokenizer"):
        check_prepared_for_model(cfg("model.init=random", f"model.tokenizer={world['other_tok']}"))
    check_prepared_for_model(cfg("model.init=random", f"model.tokenizer={world['same_tok']}"))
    check_prepared_for_model(cfg("model.init=random", "model.name_or_path=null"))
    assert TokenizerMismatchError("x").exit_code == 2


def test_a_damaged_prepared_tokenizer_is_a_clear_error(world, tmp_path):
    broken = tmp_path / "prepared"
    shutil.copytree(world["prepared"], broken)
    (broken / "tokenizer" / "tokenizer.json").write_text("{}")
    cfg = load_config(None, [f"data.prepared_dir={broken}", "model.init=random", f"model.tokenizer={world['same_tok']}"])
    with pytest.raises(PreparedDataError, match="run `threadsum prepare` again"):
        check_prepared_for_model(cfg)
