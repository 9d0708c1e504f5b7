from pathlib import Path

import pytest
import yaml

from threadsum.config import Config, ConfigError, describe_fields, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted((ROOT / "configs").glob("*.yaml"))


def test_all_recipes_present():
    names = {p.stem for p in CONFIG_FILES}
    assert {"tiny", "bart-base", "bart-large", "bart-large-lora"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_loads_and_names_its_command(path):
    cfg = load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# threadsum "), f"{path.name}: first line must be the command that runs it"
    assert f"configs/{path.name}" in first
    assert cfg.name == path.stem or cfg.name in path.stem


def test_real_target_recipe():
    cfg = load_config(ROOT / "configs" / "bart-large.yaml")
    assert cfg.model.name_or_path == "facebook/bart-large"
    assert (cfg.data.max_source_tokens, cfg.data.max_target_tokens) == (1024, 256)
    lora = load_config(ROOT / "configs" / "bart-large-lora.yaml")
    assert lora.model.lora.enabled and not cfg.model.lora.enabled


def test_overrides_are_typed():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train.lr=3e-4", "model.lora.enabled=true", "train.max_steps=7",
                                                       "model.lora.target_modules=[q_proj,v_proj]"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.lora.enabled is True
    assert cfg.train.max_steps == 7
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'"):
        load_config(None, ["train.lrr=1"])


def test_unknown_key_in_file_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  lora:\n    rank: 8\n")
    with pytest.raises(ConfigError, match=r"model\.lora\.rank"):
        load_config(p)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'train\.epochs'.*got \"many\""):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_config(None, ["train.precision=fp8"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(ROOT / "configs" / "tiny.yaml", ["train.lr.x=1"])
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(None, ["train.lr.x=1"])


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="validation_fraction"):
        load_config(None, ["data.validation_fraction=0.6", "data.test_fraction=0.5"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train.seed=7"])
    path = cfg.save(tmp_path)
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["train"]["seed"] == 7


def test_every_field_documented():
    undocumented = [key for key, _, doc in describe_fields(Config) if not doc]
    assert undocumented == []
