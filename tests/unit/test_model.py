import pytest

from threadsum import model as M
from threadsum.config import load_config
from threadsum.deps import MissingExtraError, require

TEXTS = [
    "Please review the gas contract for Duke Energy by Friday.",
    "Kim asks Stacey to remove her name from the distribution list.",
    "The lunch meeting on May 5th is confirmed; RSVP for catering.",
] * 80


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return M.train_tokenizer(TEXTS, 400, out), out


def test_trained_tokenizer_reloads_through_from_pretrained(tokenizer):
    tok, out = tokenizer
    again = M.load_tokenizer(str(out))
    ids = again("Please review the contract").input_ids
    assert ids[0] == again.bos_token_id == 0 and ids[-1] == again.eos_token_id == 2
    assert again.pad_token_id == 1
    assert again.decode(ids, skip_special_tokens=True) == "Please review the contract"
    assert ids == tok("Please review the contract").input_ids


def test_random_model_is_seeded_and_saved_like_a_hub_model(tokenizer, tmp_path):
    tok, _ = tokenizer
    cfg = load_config(None, ["model.init=random", "model.tiny.d_model=32", "model.tiny.ffn_dim=64", "train.seed=3"])
    a = M.load_model(cfg, tok)
    b = M.load_model(cfg, tok)
    assert all((pa == pb).all() for pa, pb in zip(a.parameters(), b.parameters()))
    assert a.config.vocab_size == len(tok) and a.config.d_model == 32
    a.save_pretrained(tmp_path)
    c = M.load_model(cfg, tok, init_dir=str(tmp_path))
    assert all((pa == pc).all() for pa, pc in zip(a.parameters(), c.parameters()))


def test_hub_id_offline_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M.ModelLoadError) as err:
        M.load_pretrained_model("facebook/bart-large")
    msg = str(err.value)
    assert "facebook/bart-large" in msg and "huggingface-cli download" in msg and "model.name_or_path" in msg
    with pytest.raises(M.ModelLoadError, match="huggingface-cli download"):
        M.load_tokenizer("facebook/bart-large")


def test_missing_local_dir_is_named(tmp_path):
    with pytest.raises(M.ModelLoadError, match="does not exist"):
        M.load_pretrained_model(str(tmp_path / "no-such-model"))


def test_lora_and_checkpointing_levers(tokenizer):
    tok, _ = tokenizer
    cfg = load_config(None, ["model.init=random", "model.tiny.d_model=32", "model.tiny.ffn_dim=64",
                             "model.lora.enabled=true", "model.lora.r=4", "model.gradient_checkpointing=true"])
    model = M.prepare_for_training(M.load_model(cfg, tok), cfg.model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert 0 < trainable < total * 0.5
    assert model.base_model.model.config.use_cache is False


def test_missing_extra_names_the_install_command():
    with pytest.raises(MissingExtraError, match=r"pip install 'threadsum\[serve\]'"):
        require("surely_not_an_installed_module_xyz", "serve")
