"""The model family: prompts, labels, collation and generation of decoder-only models, and the
one-owner rule (only threadsum.family and the loader decide what differs between families)."""
import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from threadsum.config import Config, config_from_dict  # noqa: E402
from threadsum.family import CAUSAL, SEQ2SEQ, FamilyError, family_of, prompt_tokenizer  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src" / "threadsum"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from threadsum.data.synth import write_kaggle_csv

    root = tmp_path_factory.mktemp("corpus")
    write_kaggle_csv(root / "raw", 90, seed=3)
    return root


@pytest.fixture(scope="module")
def causal_tokenizer(tmp_path_factory):
    from threadsum.inference.tiny import sample_texts
    from threadsum.model import train_causal_tokenizer

    return train_causal_tokenizer(sample_texts(seed=0), 700, tmp_path_factory.mktemp("tok"), 512)


def _cfg(root: Path, name: str, **model) -> Config:
    data = {"name": name,
            "data": {"source": str(root / "raw"), "prepared_dir": str(root / name), "max_source_tokens": 200,
                     "max_target_tokens": 160, "prompt": {"system": "Summarize email threads."}},
            "model": {"init": "random", "name_or_path": None,
                      "tiny": {"architecture": "llama", "d_model": 32, "decoder_layers": 1, "attention_heads": 2,
                               "ffn_dim": 64, "vocab_size": 700, "max_position_embeddings": 400}, **model},
            "eval": {"generation": {"max_new_tokens": 24}}}
    return config_from_dict(data, origin="test")


def _prepared_examples(cfg: Config):
    from threadsum.data.prepare import prepare
    from threadsum.data.prepared import open_prepared
    from threadsum.model import load_tokenizer

    prepare(cfg)
    p = open_prepared(cfg.data.prepared_dir)
    tok = load_tokenizer(str(p.tokenizer_dir))
    for split in ("train", "validation", "test"):
        records = list(p.threads(split))
        for rec, row in zip(records, p.datasets()[split]):
            yield tok, rec, row


@pytest.mark.parametrize("variant", ["chat_template", "plain_template", "pad_is_eos"])
def test_every_example_labels_exactly_the_summary_and_its_end_token(corpus, causal_tokenizer, tmp_path, variant):
    overrides = {}
    if variant == "pad_is_eos":  # Llama/Qwen base tokenizers: pad == eos must not mask the end token
        causal_tokenizer.pad_token = causal_tokenizer.eos_token
        folder = tmp_path / "tok-pad-eos"
        causal_tokenizer.save_pretrained(str(folder))
        overrides = {"tokenizer": str(folder)}
    cfg = _cfg(corpus, variant, **overrides)
    if variant == "plain_template":
        cfg.data.prompt.chat_template = "none"
    n = whole = 0
    for tok, rec, row in _prepared_examples(cfg):
        labels, prompt = row["labels"], row["input_ids"]
        end = prompt_tokenizer(tok, cfg.data.prompt).end_id
        assert labels[-1] == end and end == tok.eos_token_id
        summary_ids = tok(rec["summary"], add_special_tokens=False)["input_ids"]
        assert labels[:-1] == summary_ids[: cfg.data.max_target_tokens - 1]  # a long summary keeps its end token
        if len(summary_ids) < cfg.data.max_target_tokens:
            assert tok.decode(labels[:-1], clean_up_tokenization_spaces=False) == rec["summary"]
            whole += 1
        assert len(prompt) <= cfg.data.max_source_tokens
        assert len(prompt) + len(labels) <= cfg.model.tiny.max_position_embeddings
        text = tok.decode(prompt, skip_special_tokens=False)
        if variant == "plain_template":
            assert text.startswith("Summarize this email thread.") and text.endswith("Summary:\n")
        else:
            assert text.startswith("<|im_start|>system\nSummarize email threads.<|im_end|>")
            assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")  # the generation prompt
        b = CAUSAL.collate([prompt], [labels], tok.pad_token_id, 8)
        scored = b["labels"][0][b["labels"][0] != -100].tolist()
        assert scored == labels  # prompt ignored, every completion token (the end token too) scored
        assert b["n_label_tokens"] == len(labels)
        n += 1
    assert n == 90 and whole >= 45


def test_train_on_prompt_scores_every_position_but_the_first():
    b = CAUSAL.collate([[5, 6, 7]], [[8, 2]], pad_id=2, pad=8, train_on_prompt=True)
    assert b["labels"][0].tolist()[:5] == [6, 7, 8, 2, -100] and b["n_label_tokens"] == 4
    assert CAUSAL.label_lengths([3], [2], True).tolist() == [4]


def test_budget_lengths_make_a_causal_batch_one_padded_sequence():
    from threadsum.train.batching import padded_cost

    a, b = CAUSAL.budget_lengths([100, 37], [20, 9])
    assert a.tolist() == [120, 46] and b.tolist() == [0, 0]
    assert padded_cost(a, b, 8) == 2 * 120  # b x pad(src + tgt), not b x (pad(src) + pad(tgt))
    s, t = SEQ2SEQ.budget_lengths([100, 37], [20, 9])
    assert padded_cost(s, t, 8) == 2 * (104 + 24)


def test_prompt_tokenizer_truncates_the_thread_never_the_template(causal_tokenizer):
    cfg = Config()
    pt = prompt_tokenizer(causal_tokenizer, cfg.data.prompt)
    ids = pt("word " * 400, truncation=True, max_length=pt.n_special_tokens + 10)["input_ids"]
    assert len(ids) == pt.n_special_tokens + 10
    assert ids[:len(pt.prefix_ids)] == pt.prefix_ids and ids[-len(pt.suffix_ids):] == pt.suffix_ids


def test_a_tokenizer_without_eos_is_refused_with_the_fix(causal_tokenizer):
    causal_tokenizer = type(causal_tokenizer).from_pretrained(causal_tokenizer.name_or_path)
    causal_tokenizer.chat_template = None
    causal_tokenizer.eos_token = None
    with pytest.raises(FamilyError, match="no EOS token"):
        prompt_tokenizer(causal_tokenizer, Config().data.prompt)


def test_family_is_read_from_the_model_config():
    from transformers import BartConfig, LlamaConfig

    assert family_of(BartConfig()) is SEQ2SEQ and family_of(LlamaConfig()) is CAUSAL
    assert family_of({"is_encoder_decoder": False}) is CAUSAL


def _causal_folder(tmp_path, tokenizer, seed=0):
    from threadsum.model import build_random_model, set_stop_tokens

    cfg = _cfg(tmp_path, "model", tokenizer=None)
    torch.manual_seed(seed)
    model = build_random_model(cfg.model, tokenizer).eval()
    set_stop_tokens(model, CAUSAL.source_tokenizer(tokenizer, cfg.data.prompt), tokenizer.pad_token_id)
    out = tmp_path / "model"
    model.save_pretrained(str(out))
    model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    cfg.save(out)
    return out


@pytest.mark.parametrize("beams,no_repeat", [(1, 0), (2, 3)])
def test_batched_generation_equals_one_at_a_time(tmp_path, causal_tokenizer, beams, no_repeat):
    """Left padding, position ids and the prompt cut: a batch of very different lengths decodes each
    thread exactly as it decodes alone."""
    from threadsum.generation import generate_batches
    from threadsum.inference.summarizer import Summarizer

    summarizer = Summarizer.from_pretrained(str(_causal_folder(tmp_path, causal_tokenizer)), device="cpu")
    gen = summarizer.cfg.eval.generation
    gen.num_beams, gen.no_repeat_ngram_size, gen.min_new_tokens, gen.max_new_tokens = beams, no_repeat, 3, 12
    texts = ["Subject: a\nFrom: Ann\nTo: Bob\nDate: unknown\nhi", "Subject: budget\n" + "Bob, the budget is due. " * 30,
             "Subject: c\nFrom: Carl\n" + "Please send the report by Friday. " * 8]
    ids = summarizer.source_tokenizer(texts, truncation=True, max_length=summarizer.max_source_tokens)["input_ids"]
    assert len({len(x) for x in ids}) == 3
    model, tok = summarizer.model, summarizer.tokenizer
    batched = {}
    for batch in generate_batches(model, tok, ids, gen, torch.device("cpu"), batch_size=3):
        batched.update(zip(batch.indices, zip(batch.texts, batch.n_tokens)))
    for i, x in enumerate(ids):
        (alone,) = list(generate_batches(model, tok, [x], gen, torch.device("cpu"), batch_size=1))
        assert (alone.texts[0], alone.n_tokens[0]) == batched[i]
        assert 0 < alone.n_tokens[0] <= 12  # new tokens only: the prompt is not counted or returned
        assert "Subject" not in alone.texts[0] or "Subject" in tok.decode(x)  # nothing of the template leaks


def test_summarizer_prompt_ids_equal_the_prepared_ones(corpus, causal_tokenizer, tmp_path):
    """The prompt tokens a causal model is trained on are exactly what generation sees."""
    from threadsum.inference.summarizer import Summarizer

    cfg = _cfg(corpus, "same-prompt")
    examples = list(_prepared_examples(cfg))
    tok = examples[0][0]
    folder = _causal_folder(tmp_path, tok)
    cfg.save(folder)  # the run's settings travel with the model folder
    summarizer = Summarizer.from_pretrained(str(folder), device="cpu")
    raw = {r["thread_id"]: r for r in _raw_threads(cfg)}
    checked = truncated = 0
    for _, rec, row in examples[:40]:
        p = summarizer.prepare(raw[rec["thread_id"]]["thread"])
        ids = summarizer.source_tokenizer([p.text], truncation=True, max_length=summarizer.max_source_tokens)["input_ids"][0]
        assert ids == row["input_ids"], rec["thread_id"]
        checked += 1
        truncated += rec["truncated"]
    assert checked == 40 and truncated > 0  # long threads were cut the same way too


def _raw_threads(cfg):
    from threadsum.data.readers import read_source

    for th in read_source(Path(cfg.data.source), "auto", max_body_chars=cfg.data.max_body_chars).threads:
        yield {"thread_id": th.thread_id, "thread": th}


def test_only_the_family_module_and_the_loader_decide_by_family():
    """No `if family == ...` / `.name == "causal"` outside threadsum/family.py (the one owner)."""
    pattern = re.compile(r"""(family|\.name)\s*[!=]=\s*["'](causal|seq2seq)["']|is_encoder_decoder""")
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "family.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert offenders == []


def test_data_prepared_for_the_other_family_is_refused_with_the_fix(tmp_path):
    from threadsum.errors import ExitCode
    from threadsum.family import check_prepared_family

    (tmp_path / "prepare.json").write_text(json.dumps({"status": "ok", "family": "seq2seq"}))
    check_prepared_family(tmp_path, SEQ2SEQ)
    with pytest.raises(FamilyError, match="prepared for a seq2seq model, but this model is causal.*threadsum prepare") as e:
        check_prepared_family(tmp_path, CAUSAL)
    assert e.value.exit_code == ExitCode.USAGE == 2


def test_an_explicit_family_that_contradicts_the_model_is_a_one_line_error(tmp_path):
    from threadsum.config import load_config
    from threadsum.model import ModelLoadError, family_for

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bart", "is_encoder_decoder": True}))
    with pytest.raises(ModelLoadError) as err:
        family_for(load_config(None, [f"model.name_or_path={tmp_path}", "model.family=causal"]).model)
    msg = str(err.value)
    assert "\n" not in msg and "a seq2seq model" in msg and "model.family=auto" in msg
    assert family_for(load_config(None, [f"model.name_or_path={tmp_path}", "model.family=seq2seq"]).model) is SEQ2SEQ
    with pytest.raises(ModelLoadError, match="model.tiny.architecture=qwen2, a causal model"):
        family_for(load_config(None, ["model.init=random", "model.tiny.architecture=qwen2",
                                      "model.family=seq2seq"]).model)
    bare = tmp_path / "tokenizer-only"
    bare.mkdir()  # no model config: the explicit family decides
    assert family_for(load_config(None, [f"model.name_or_path={bare}", "model.family=causal"]).model) is CAUSAL
