"""The CTranslate2 engine for decoder-only models: export, a ``Generator``, the same summaries as torch.

Two tiny Llama models, both written here:

- ``varied``: random init with large weights (init_std 0.3), untied output embeddings and the rows of
  the two end tokens (``<|im_end|>``, ``<|endoftext|>``: the generation config's ``eos_token_id`` is a
  list, as Qwen's is) scaled up, so summaries end by themselves at lengths from the minimum to the
  maximum, on either end token: the length rules, the end-token list, the n-gram rule and beam
  scoring are all exercised.
- ``trained``: a few optimizer steps on synthetic threads (``threadsum synth``, ``prepare``, ``train``
  with the tiny-causal recipe shrunk), so the int8 check compares learned output, not noise.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ctranslate2")

from typer.testing import CliRunner  # noqa: E402

from threadsum.cli import app  # noqa: E402
from threadsum.config import GenerationConfig  # noqa: E402
from threadsum.family import CAUSAL, family_of_folder  # noqa: E402
from threadsum.inference.engine import TorchEngine, load_engine  # noqa: E402
from threadsum.inference.export import export_model  # noqa: E402
from threadsum.inference.summarizer import Summarizer, load_saved_config  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir, sample_thread  # noqa: E402
from threadsum.model import load_pretrained_model, load_tokenizer  # noqa: E402

N_THREADS = 40
WORDS = "gas power deal meeting please review contract thanks Monday price invoice pipeline".split()
DECODING = {
    "greedy": GenerationConfig(num_beams=1, no_repeat_ngram_size=0, min_new_tokens=4, max_new_tokens=24, batch_size=8),
    "greedy-ngram3": GenerationConfig(num_beams=1, no_repeat_ngram_size=3, min_new_tokens=4, max_new_tokens=24,
                                      batch_size=8),
    "beams2": GenerationConfig(num_beams=2, no_repeat_ngram_size=0, min_new_tokens=4, max_new_tokens=24, batch_size=8),
    "beams2-ngram2": GenerationConfig(num_beams=2, no_repeat_ngram_size=2, length_penalty=1.5, min_new_tokens=4,
                                      max_new_tokens=24, batch_size=8),
}
LLAMA = {"model.tiny.architecture": "llama", "model.tiny.kv_heads": 1, "model.tiny.init_std": 0.3}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine
    yield
    torch.set_num_threads(before)


def _varied_model(out: Path) -> Path:
    build_tiny_model_dir(out, overrides=LLAMA)
    model = load_pretrained_model(str(out))
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    with torch.no_grad():
        head.weight.copy_(model.get_input_embeddings().weight)
        head.weight[2] *= 3.0  # <|im_end|>
        head.weight[0] *= 2.4  # <|endoftext|>
    model.config.tie_word_embeddings = False
    model.lm_head = head
    model.generation_config.eos_token_id = [2, 0]
    model.save_pretrained(str(out))
    return out


def _prompts(folder: Path, n: int, seed: int = 1) -> list[list[int]]:
    """Prompt ids as the Summarizer builds them (chat template around the thread), varied lengths."""
    cfg = load_saved_config(str(folder))
    src_tok = CAUSAL.source_tokenizer(load_tokenizer(str(folder)), cfg.data.prompt)
    rng = random.Random(seed)
    return [src_tok(" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 150))))["input_ids"] for _ in range(n)]


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct2-causal")
    src = _varied_model(root / "model")
    exported = export_model(str(src), str(root / "model-ct2"), "ctranslate2", "float32")
    return {"root": root, "src": src, "exported": exported, "seqs": _prompts(src, N_THREADS)}


def _outputs(engine, seqs, gen) -> list[tuple[str, int]]:
    out = {}
    for batch in engine.generate_batches(seqs, gen):
        out.update({i: (t, n) for i, t, n in zip(batch.indices, batch.texts, batch.n_tokens)})
    return [out[i] for i in range(len(seqs))]


# ------------------------------------------------------------------------------------ export
def test_export_of_a_causal_folder_records_the_family(varied):
    out = varied["exported"]
    for name in ("model.bin", "config.json", "tokenizer.json", "generation_config.json", "config.yaml",
                 "threadsum-export.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "threadsum-export.json").read_text())
    assert manifest["family"] == "causal" and manifest["ct2_class"] == "Generator"
    assert manifest["max_source_positions"] == 256 and manifest["vocab_size"] == 600
    assert family_of_folder(out) is CAUSAL
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 0]
    engine = load_engine(str(out), "auto", "cpu", threads=1)
    assert type(engine.runner).__name__ == "Generator" and engine.family is CAUSAL


# ---------------------------------------------------------------------------------- equality
@pytest.mark.parametrize("mode", list(DECODING))
def test_generator_float32_summaries_equal_torch(varied, mode):
    gen = DECODING[mode]
    seqs = varied["seqs"]
    torch_out = _outputs(load_engine(str(varied["src"]), "torch", "cpu"), seqs, gen)
    ct2_out = _outputs(load_engine(str(varied["exported"]), "auto", "cpu", threads=1), seqs, gen)
    # the model must make the check worth something: distinct summaries ending at many lengths
    # (n_tokens leaves out special tokens, <|im_start|> among them, so it may be under min_new_tokens)
    lengths = [n for _, n in torch_out]
    assert len(set(torch_out)) >= N_THREADS // 2
    assert len(set(lengths)) >= 5 and max(lengths) <= gen.max_new_tokens
    equal = sum(a == b for a, b in zip(torch_out, ct2_out))
    print(f"{mode}: {equal}/{N_THREADS} summaries equal, lengths {min(lengths)}-{max(lengths)}")
    assert equal >= N_THREADS - 1, [(a, b) for a, b in zip(torch_out, ct2_out) if a != b]


def test_the_ngram_rule_ignores_the_prompt(varied):
    """A prompt made of one repeated word: a rule that saw the prompt would ban that word's n-grams."""
    cfg = load_saved_config(str(varied["src"]))
    src_tok = CAUSAL.source_tokenizer(load_tokenizer(str(varied["src"])), cfg.data.prompt)
    seqs = [src_tok(" ".join([w] * 40))["input_ids"] for w in WORDS]
    gen = GenerationConfig(num_beams=1, no_repeat_ngram_size=1, min_new_tokens=8, max_new_tokens=8, batch_size=4)
    torch_out = _outputs(load_engine(str(varied["src"]), "torch", "cpu"), seqs, gen)
    ct2_out = _outputs(load_engine(str(varied["exported"]), "auto", "cpu", threads=1), seqs, gen)
    assert torch_out == ct2_out


# ------------------------------------------------------------------------------------- LoRA
def test_lora_causal_run_folder_is_merged_on_export(varied, tmp_path, restore_threadsum_logging):
    from peft import LoraConfig, get_peft_model

    base = load_pretrained_model(str(varied["src"]))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(CAUSAL.lora_targets),
                                                 task_type=CAUSAL.peft_task))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # lora_B starts at zero: without this the merge would change nothing
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    load_tokenizer(str(varied["src"])).save_pretrained(str(adapter))
    for name in ("config.yaml", "generation_config.json"):
        shutil.copy2(varied["src"] / name, adapter / name)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    assert family_of_folder(adapter) is CAUSAL

    res = CliRunner().invoke(app, ["export", str(adapter), "--format", "ctranslate2", "--quantization", "float32",
                                   "--out", str(tmp_path / "merged-ct2")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "merged-ct2"
    manifest = json.loads((out / "threadsum-export.json").read_text())
    assert manifest["merged_adapter"] is True and manifest["family"] == "causal"
    tok = load_tokenizer(str(varied["src"]))
    gen, seqs = DECODING["greedy"], varied["seqs"][:10]
    merged = _outputs(TorchEngine(peft_model.merge_and_unload(), tok, torch.device("cpu")), seqs, gen)
    plain = _outputs(load_engine(str(varied["src"]), "torch", "cpu"), seqs, gen)
    fast = _outputs(load_engine(str(out), "auto", "cpu", threads=1), seqs, gen)
    assert sum(a == b for a, b in zip(fast, merged)) >= 9
    assert sum(a != b for a, b in zip(merged, plain)) >= 8  # the adapter changed the summaries


@pytest.fixture
def restore_threadsum_logging():
    # the CLI attaches a handler to the stderr CliRunner swaps in and closes; later logs would hit it
    import logging

    logger = logging.getLogger("threadsum")
    before = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate = before[0], before[1]
    logger.setLevel(before[2])


# -------------------------------------------------------------------------------- Summarizer
def test_summarizer_runs_a_causal_export(varied):
    fast = Summarizer.from_pretrained(str(varied["exported"]), device="cpu")
    slow = Summarizer.from_pretrained(str(varied["src"]), device="cpu")
    assert fast.engine.name == "ctranslate2" and fast.family is CAUSAL and fast.info()["engine"] == "ctranslate2"
    threads = [sample_thread(i) for i in range(6)]
    summaries = fast.summarize_batch(threads)
    assert all(isinstance(s, str) for s in summaries) and any(summaries)
    assert summaries == slow.summarize_batch(threads)


# -------------------------------------------------------------------------------- int8 quality
TRAIN_OVERRIDES = [
    "data.max_source_tokens=256", "data.max_target_tokens=48", "model.tiny.d_model=96", "model.tiny.decoder_layers=2",
    "model.tiny.attention_heads=4", "model.tiny.kv_heads=2", "model.tiny.ffn_dim=256", "model.tiny.vocab_size=1000",
    "model.tiny.max_position_embeddings=320", "train.max_steps=30", "train.batch_tokens=2048", "train.max_tokens=2048",
    "train.lr=3e-3", "train.warmup_steps=5", "train.eval_every_steps=0", "train.checkpoint_every_steps=0",
    "track.tracking_uri=none", "eval.bootstrap_samples=50", "eval.device=cpu",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct2-causal-trained")
    recipe = Path(__file__).resolve().parents[2] / "configs" / "tiny-causal.yaml"
    runner = CliRunner()
    common = ["-c", str(recipe), f"data.source={root / 'synth'}", f"data.prepared_dir={root / 'prepared'}",
              f"train.output_dir={root / 'run'}", *TRAIN_OVERRIDES]
    for args in (["synth", "-n", "350", "-o", str(root / "synth")], ["prepare", *common], ["train", *common]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args[0], res.output)
    model = root / "run" / "model"
    return model, {q: export_model(str(model), str(root / f"ct2-{q}"), "ctranslate2", q) for q in ("float32", "int8")}


def test_int8_rouge_within_two_points_of_torch(trained, tmp_path, restore_threadsum_logging):
    from threadsum.evaluate.run import evaluate

    model, exported = trained
    cfg = load_saved_config(str(model))
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "bootstrap_samples": 50, "device": "cpu", "max_threads": N_THREADS,
        "generation": GenerationConfig(num_beams=2, no_repeat_ngram_size=3, min_new_tokens=4, max_new_tokens=32,
                                       batch_size=8)})})
    results = {name: evaluate(cfg, str(path), "test", str(tmp_path / name))
               for name, path in (("torch", model), *exported.items())}
    assert results["int8"]["engine"] == "ctranslate2" and results["torch"]["engine"] == "torch"
    rouge = {k: 100 * r["model"]["rougeL"]["mean"] for k, r in results.items()}
    print(f"ROUGE-L x100 on the test threads: {rouge}")
    assert rouge["torch"] > 5, rouge  # the model learned something to lose
    assert abs(rouge["int8"] - rouge["torch"]) <= 2.0, rouge

    def predictions(name):
        return [json.loads(line)["prediction"] for line in (tmp_path / name / "predictions.jsonl").open()]

    a, b = predictions("torch"), predictions("float32")
    assert sum(x == y for x, y in zip(a, b)) >= 0.95 * len(a)
