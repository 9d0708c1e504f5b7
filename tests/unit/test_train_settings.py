"""Training settings: refused values say why and what to use instead (exit 2 via ConfigError)."""
import pytest

from threadsum.config import WEIGHT_NEUTRAL_KEYS, load_config
from threadsum.errors import ConfigError, ExitCode


def test_deepspeed_is_refused_by_the_config_with_the_alternative():
    with pytest.raises(ConfigError, match=r"train\.strategy.*deepspeed is not supported.*train\.strategy=fsdp"):
        load_config(None, ["train.strategy=deepspeed"])


def test_removed_setting_is_an_unknown_key():
    with pytest.raises(ConfigError, match="num_workers"):
        load_config(None, ["train.num_workers=2"])


def test_nonfinite_settings_validate():
    cfg = load_config(None, ["train.on_nonfinite=skip", "train.max_nonfinite_skips=3"])
    assert cfg.train.on_nonfinite == "skip" and cfg.train.max_nonfinite_skips == 3
    assert load_config(None, []).train.on_nonfinite == "stop"
    with pytest.raises(ConfigError, match="on_nonfinite"):
        load_config(None, ["train.on_nonfinite=ignore"])
    # changing the policy changes the result of a resumed run: it is not listed as neutral
    assert "train.on_nonfinite" not in WEIGHT_NEUTRAL_KEYS


def test_optimizer_that_cannot_run_on_the_device_is_a_config_error(monkeypatch):
    torch = pytest.importorskip("torch")
    from threadsum.train import optim

    cfg = load_config(None, ["train.optimizer=adamw8bit"])
    # as if bitsandbytes were installed: the device check must refuse CPU by itself
    real = optim.importlib.util.find_spec
    monkeypatch.setattr(optim.importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError) as info:
        optim.build_optimizer(torch.nn.Linear(2, 2), cfg.train, "cpu")
    assert info.value.exit_code == ExitCode.USAGE
    assert "adamw8bit" in str(info.value) and "cpu" in str(info.value) and "train.optimizer=adamw" in str(info.value)
