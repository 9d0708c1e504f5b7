"""threadsum's model folders load with plain Hugging Face code under the oldest transformers that
pyproject.toml allows (4.46) as under the current one: same token ids, same logits, truncation to the
model's positions, generation on a long input.

The old transformers lives in a venv of its own (tests/compat/make_venv.py), built once and reused
(`make test` builds it before pytest; first build ~1.5 min on 2 vCPUs, then ~10 s for this module).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

from threadsum.inference.tiny import build_tiny_model_dir, sample_texts, tiny_config  # noqa: E402
from threadsum.model import build_random_model, finalize_model_folder, train_tokenizer  # noqa: E402

pytestmark = pytest.mark.compat
COMPAT = Path(__file__).resolve().parents[1] / "compat"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"threadsum_compat_{name}", COMPAT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def old_python() -> Path:
    make_venv = _module("make_venv")
    try:
        venv = make_venv.ensure_venv()
    except make_venv.Unreachable as exc:
        pytest.skip(f"pip cannot reach transformers 4.46 to build the compat venv: {exc}")
    return make_venv.venv_python(venv)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny folder as build_tiny_model_dir writes it, and one written the way export writes model/:
    plain save_pretrained of model and tokenizer, then finalize_model_folder."""
    root = tmp_path_factory.mktemp("hfcompat")
    tiny = build_tiny_model_dir(root / "tiny", overrides={"model.tiny.max_position_embeddings": 192})
    exported = root / "exported"
    cfg = tiny_config({"model.tiny.max_position_embeddings": 160})
    tok = train_tokenizer(sample_texts(seed=3), 500, root / "tok")  # no max_positions: export must set it
    torch.manual_seed(0)
    model = build_random_model(cfg.model, tok)
    model.save_pretrained(str(exported))
    tok.save_pretrained(str(exported))
    finalize_model_folder(exported, model)
    return {"tiny": tiny, "exported": exported}


def test_oldest_transformers_loads_and_generates_like_the_current_one(folders, old_python):
    names = sorted(folders)
    proc = subprocess.run([str(old_python), str(COMPAT / "load_model_folder.py"), *(str(folders[n]) for n in names)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    old = dict(zip(names, json.loads(proc.stdout.strip().splitlines()[-1])))
    inspect_folder = _module("load_model_folder").inspect_folder
    for name in names:
        new, was = inspect_folder(str(folders[name])), old[name]
        assert was["transformers"].startswith("4.46.") and int(new["transformers"].split(".")[0]) >= 5
        positions = {"tiny": 192, "exported": 160}[name]
        for seen in (was, new):
            assert seen["model_max_length"] == seen["positions"] == positions, (name, seen)
            assert seen["truncated_tokens"] == positions  # the long input was cut to what the model takes
            assert seen["generated_tokens"] >= 2
            assert seen["input_names"] == ["attention_mask", "input_ids"]  # no token_type_ids for BART
            assert seen["missing_keys"] == [] and seen["unexpected_keys"] == []
        assert was["short_ids"] == new["short_ids"], name
        assert was["logits"] == pytest.approx(new["logits"], abs=1e-3), name
