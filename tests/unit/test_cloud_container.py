"""The SageMaker container contract: SM_* variables or /opt/ml config files -> config overrides."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from threadsum.cloud import container as c
from threadsum.config import load_config


def _tree(root: Path, channels=("prepared",), hps=None, hosts=("algo-1",), current="algo-1") -> Path:
    """A temporary /opt/ml as SageMaker lays it out (config files only, no SM_* variables)."""
    cfg_dir = root / "input" / "config"
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "hyperparameters.json").write_text(json.dumps(hps or {"config": "config.yaml"}))
    (cfg_dir / "resourceconfig.json").write_text(
        json.dumps({"current_host": current, "hosts": list(hosts), "network_interface_name": "eth0"})
    )
    (cfg_dir / "inputdataconfig.json").write_text(json.dumps({ch: {"TrainingInputMode": "File"} for ch in channels}))
    for ch in channels:
        (root / "input" / "data" / ch).mkdir(parents=True)
    return root


def test_outside_sagemaker_returns_none(tmp_path):
    assert c.sagemaker_overrides({c.ROOT_ENV: str(tmp_path)}) is None
    assert not c.in_sagemaker({c.ROOT_ENV: str(tmp_path)})


def test_overrides_from_config_files(tmp_path):
    root = _tree(tmp_path / "ml", hps={"config": "config.yaml", "checkpoint_every_minutes": "4"})
    env = {c.ROOT_ENV: str(root)}
    assert c.sagemaker_overrides(env) == [
        f"data.prepared_dir={root}/input/data/prepared",
        f"train.output_dir={root}/checkpoints",
        "train.resume=auto",
        "train.checkpoint_every_minutes=4",
    ]
    info = c.read_env(env)
    assert info.model_dir == root / "model" and info.output_data_dir == root / "output" / "data"
    assert info.hosts == ["algo-1"] and info.is_leader and info.network_interface == "eth0"


def test_sm_variables_take_precedence(tmp_path):
    root = tmp_path / "ml"
    env = {
        c.ROOT_ENV: str(root),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_OUTPUT_DATA_DIR": str(tmp_path / "out"),
        "SM_CHANNELS": '["prepared"]',
        "SM_CHANNEL_PREPARED": str(tmp_path / "chan"),
        # the toolkit JSON-decodes hyperparameters, so numbers arrive as numbers
        "SM_HPS": json.dumps({"config": "config.yaml", "checkpoint_every_minutes": 2.5, "distribution": "torchrun"}),
        "SM_HOSTS": '["algo-1", "algo-2"]',
        "SM_CURRENT_HOST": "algo-2",
        "SM_NUM_GPUS": "4",
    }
    overrides = c.sagemaker_overrides(env)
    assert overrides[0] == f"data.prepared_dir={tmp_path / 'chan'}"
    assert "train.checkpoint_every_minutes=2.5" in overrides
    info = c.read_env(env)
    assert info.model_dir == tmp_path / "model" and info.num_gpus == 4
    assert info.node_rank == 1 and not info.is_leader


def test_overrides_apply_to_a_real_config(tmp_path):
    root = _tree(tmp_path / "ml")
    cfg = load_config(None, c.sagemaker_overrides({c.ROOT_ENV: str(root)}))
    assert cfg.train.output_dir == str(root / "checkpoints")
    assert cfg.train.resume == "auto" and cfg.train.checkpoint_every_minutes == 10.0
    assert cfg.data.prepared_dir == str(root / "input" / "data" / "prepared")


def test_raw_channel_points_source_at_the_file(tmp_path):
    root = _tree(tmp_path / "ml", channels=("raw",), hps={"raw_source_name": "threads.jsonl"})
    overrides = c.sagemaker_overrides({c.ROOT_ENV: str(root)})
    assert f"data.source={root}/input/data/raw/threads.jsonl" in overrides
    assert f"data.prepared_dir={root}/threadsum/prepared" in overrides


def test_no_data_channel_is_explained(tmp_path):
    root = _tree(tmp_path / "ml", channels=("train",))
    with pytest.raises(c.ContainerError, match="no 'prepared' or 'raw' input channel"):
        c.sagemaker_overrides({c.ROOT_ENV: str(root)})


def test_train_command_single_process(tmp_path):
    root = _tree(tmp_path / "ml")
    env = c.read_env({c.ROOT_ENV: str(root), "SM_NUM_GPUS": "1"})
    cmd = c.train_command(env, Path("/x/config.yaml"))
    assert cmd == [sys.executable, "-m", "threadsum", "train", "--config", "/x/config.yaml"]


def test_train_command_torchrun_across_hosts(tmp_path):
    root = _tree(tmp_path / "ml", hps={"distribution": "torchrun", "nproc_per_node": "auto"},
                 hosts=("algo-1", "algo-2"), current="algo-2")
    env = c.read_env({c.ROOT_ENV: str(root), "SM_NUM_GPUS": "8"})
    cmd = c.train_command(env, Path("/x/config.yaml"))
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node_rank=1", "--nproc_per_node=8", "--master_addr=algo-1"} <= set(cmd)
    assert cmd[-5:] == ["-m", "threadsum", "train", "--config", "/x/config.yaml"]


def test_distribution_none_keeps_one_process(tmp_path):
    root = _tree(tmp_path / "ml", hps={"distribution": "none"})
    env = c.read_env({c.ROOT_ENV: str(root), "SM_NUM_GPUS": "4"})
    assert "torch.distributed.run" not in c.train_command(env, Path("c.yaml"))


def test_export_model_copies_model_and_record(tmp_path):
    root = _tree(tmp_path / "ml")
    out = tmp_path / "run"
    (out / "model" / "tokenizer").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "model" / "tokenizer" / "tokenizer.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    written = c.export_model(out, {c.ROOT_ENV: str(root)})
    assert written == root / "model"
    assert (root / "model" / "config.json").is_file() and (root / "model" / "tokenizer" / "tokenizer.json").is_file()
    assert (root / "output" / "data" / "metrics.jsonl").is_file()


def test_export_model_only_on_the_leader(tmp_path):
    root = _tree(tmp_path / "ml", hosts=("algo-1", "algo-2"), current="algo-2")
    assert c.export_model(tmp_path / "run", {c.ROOT_ENV: str(root)}) is None


def test_export_without_model_fails_clearly(tmp_path):
    root = _tree(tmp_path / "ml")
    with pytest.raises(c.ContainerError, match="without a model"):
        c.export_model(tmp_path / "run", {c.ROOT_ENV: str(root)})


def test_entry_without_config_writes_failure_reason(tmp_path):
    root = _tree(tmp_path / "ml", hps={"config": str(tmp_path / "missing.yaml")})
    with pytest.raises(c.ContainerError, match="not found"):
        c.main([], {c.ROOT_ENV: str(root)})
    assert "missing.yaml" in (root / "output" / "failure").read_text()


def test_container_module_does_not_import_boto3():
    code = "import sys, threadsum.cloud.container; sys.exit('boto3' in sys.modules or 'botocore' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
