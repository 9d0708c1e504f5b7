"""The CTranslate2 side of the decoding rules, and the [fast] extra's message (no ctranslate2 needed)."""
from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from threadsum.cli import app
from threadsum.config import GenerationConfig
from threadsum.errors import MissingExtraError
from threadsum.generation import (
    SpecialTokens,
    decoding_settings,
    equal_length_runs,
    generator_options,
    translate_options,
)

BART = SpecialTokens(decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=2)


def test_translate_options_follow_the_decoding_settings():
    gen = GenerationConfig(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_new_tokens=10,
                           max_new_tokens=128)
    opts = translate_options(gen, BART)
    assert opts["beam_size"] == 4 and opts["length_penalty"] == 2.0 and opts["no_repeat_ngram_size"] == 3
    assert opts["patience"] == 1.0  # early_stopping: stop at num_beams finished beams
    assert opts["sampling_topk"] == 1 and opts["num_hypotheses"] == 1
    assert opts["return_scores"] is False and opts["return_attention"] is False
    # the forced EOS takes the last of max_new_tokens in generate(); CTranslate2 just stops one earlier
    assert opts["max_decoding_length"] == 127 and opts["min_decoding_length"] == 10
    no_forced_eos = translate_options(gen, BART._replace(forced_eos_token_id=None))
    assert no_forced_eos["max_decoding_length"] == 128


def test_translate_options_cap_the_minimum_at_the_maximum():
    gen = GenerationConfig(num_beams=1, min_new_tokens=50, max_new_tokens=20)
    opts = translate_options(gen, BART)
    assert opts["beam_size"] == 1
    assert opts["min_decoding_length"] == opts["max_decoding_length"] == 19
    assert decoding_settings(gen)["min_new_tokens"] == 20


def test_export_without_the_fast_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # find_spec answers None: as if not installed
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    res = CliRunner().invoke(app, ["export", str(tmp_path / "model"), "--format", "ctranslate2",
                                   "--quantization", "int8", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "pip install 'threadsum[fast]'" in res.output and "ctranslate2" in res.output
    assert not (tmp_path / "out").exists()


def test_loading_a_converted_folder_without_the_extra_names_it(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from threadsum.inference.engine import load_engine

    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(MissingExtraError, match=r"threadsum\[fast\]"):
        load_engine(str(tmp_path), "auto", "cpu")


def test_generator_options_count_new_tokens_and_stop_on_every_end_token():
    gen = GenerationConfig(num_beams=2, length_penalty=1.5, no_repeat_ngram_size=3, min_new_tokens=80,
                           max_new_tokens=64)
    opts = generator_options(gen, SpecialTokens(None, None, None, [2, 0]).end_ids(None))
    assert opts["include_prompt_in_result"] is False and opts["return_end_token"] is False
    assert opts["max_length"] == 64 and opts["min_length"] == 64  # the floor is capped at the ceiling
    assert opts["end_token"] == [2, 0] and opts["beam_size"] == 2 and opts["patience"] == 1.0
    assert opts["length_penalty"] == 1.5 and opts["no_repeat_ngram_size"] == 3 and opts["sampling_topk"] == 1


def test_end_ids_fall_back_to_the_tokenizer_and_runs_split_on_length():
    class Tok:
        eos_token_id = 7

    assert SpecialTokens(None, None, None).end_ids(Tok()) == [7]
    assert SpecialTokens(None, None, None, 5).end_ids(Tok()) == [5]
    assert equal_length_runs([3, 0, 1, 2], [4, 4, 4, 9]) == [[3], [0, 1, 2]]
