"""Model and tokenizer folders written by threadsum load with plain Hugging Face code: a portable
tokenizer class, model_max_length = the model's positions, every file as readable as the rest."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402

from threadsum.inference.tiny import build_tiny_model_dir, sample_texts, tiny_config  # noqa: E402
from threadsum.model import (  # noqa: E402
    build_random_model,
    finalize_model_folder,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)

LONG_TEXT = "Please review the revised gas contract before Monday's meeting. " * 300


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


def _config(folder: Path) -> dict:
    return json.loads((folder / "tokenizer_config.json").read_text())


def _export_like(folder: Path, positions: int) -> Path:
    """What export writes: plain save_pretrained of model and tokenizer, then finalize_model_folder."""
    tok = train_tokenizer(sample_texts(seed=2), 500, folder.parent / f"{folder.name}-tok")
    torch.manual_seed(0)
    model = build_random_model(tiny_config({"model.tiny.max_position_embeddings": positions}).model, tok)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    finalize_model_folder(folder, model)
    return folder


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    before = os.umask(0o022)
    os.umask(before)
    yield set_mask
    os.umask(before)


@pytest.mark.parametrize("kind", ["tiny", "export"])
def test_folder_loads_truncates_to_the_models_positions_and_generates(tmp_path, kind, umask):
    umask(0o022)
    positions = 96
    folder = (build_tiny_model_dir(tmp_path / "m", overrides={"model.tiny.max_position_embeddings": positions})
              if kind == "tiny" else _export_like(tmp_path / "m", positions))
    cfg = _config(folder)
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # 4.x has no TokenizersBackend
    assert cfg["model_max_length"] == positions
    assert cfg["model_input_names"] == ["input_ids", "attention_mask"]
    assert "local_files_only" not in cfg and "is_local" not in cfg  # how it was loaded is no setting
    modes = _modes(folder)
    assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes
    assert set(modes.values()) == {0o644}, modes

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(folder))
    assert model.config.max_position_embeddings == positions == tok.model_max_length
    enc = tok(LONG_TEXT, truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape[1] == positions
    out = model.generate(**enc, max_new_tokens=4)  # an input past the positions raised IndexError
    assert out.shape[0] == 1


def test_file_modes_follow_the_umask(tmp_path, umask):
    umask(0o027)
    folder = build_tiny_model_dir(tmp_path / "m")
    assert set(_modes(folder).values()) == {0o640}, _modes(folder)


def test_save_tokenizer_sets_max_length_and_keeps_ids(tmp_path):
    tok = train_tokenizer(sample_texts(), 500, tmp_path / "a", max_positions=321)
    assert _config(tmp_path / "a")["model_max_length"] == 321 == tok.model_max_length
    save_tokenizer(tok, tmp_path / "b")  # no positions given: the tokenizer's own is kept
    again = load_tokenizer(str(tmp_path / "b"))
    assert again.model_max_length == 321
    assert again("gas contract review").input_ids == tok("gas contract review").input_ids
    assert finalize_model_folder(tmp_path / "b", again) == tmp_path / "b"  # no model config: idempotent, no error


def test_fingerprint_is_what_ids_mean(tmp_path):
    a = train_tokenizer(sample_texts(seed=0), 500, tmp_path / "a")
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(load_tokenizer(str(tmp_path / "a")))
    b = train_tokenizer(sample_texts(seed=5), 500, tmp_path / "b")  # other texts: other merges and ids
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
    c = train_tokenizer(sample_texts(seed=0), 500, tmp_path / "c")
    c.add_special_tokens({"pad_token": "<mask>"})  # same vocabulary, another pad id
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(c)
