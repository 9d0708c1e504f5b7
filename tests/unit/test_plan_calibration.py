"""The planner's CPU calibration (`plan --calibrate`) and the one rule that picks bf16 on a CPU."""
from __future__ import annotations

import io
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console  # noqa: E402

from threadsum import devices  # noqa: E402
from threadsum.config import load_config  # noqa: E402
from threadsum.train import calibrate as cal  # noqa: E402
from threadsum.train import cost  # noqa: E402
from threadsum.train import memory as mem  # noqa: E402


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cal.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def cfg(tmp_path):
    return load_config(None, [f"data.prepared_dir={tmp_path / 'none'}", "train.precision=fp32"])


# ------------------------------------------------------------------------- the bf16 rule
@pytest.mark.parametrize("flags, expected", [
    ({"avx", "avx2", "fma"}, "fp32"),  # AVX2-only EPYC: bf16 is emulated
    ({"avx2", "avx512f", "avx512_vnni"}, "fp32"),  # AVX-512 without BF16 (Skylake/Cascade Lake: m5, c5)
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),  # Zen 4, Cooper Lake
    ({"avx2", "amx_tile", "amx_bf16"}, "bf16"),  # Sapphire Rapids
])
def test_auto_precision_follows_the_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(flags))
    assert devices.resolve_precision("auto", "cpu") == expected
    assert devices.resolve_precision("fp32", "cpu") == "fp32"  # an explicit setting is kept
    # the planner's 'this machine' device and its levers follow the same rule
    dev = mem.resolve_device("cpu")
    assert dev.bf16 is (expected == "bf16")
    assert mem.resolve_precision("auto", dev) == expected
    # inference.dtype=auto keeps fp32 on every CPU (bf16 summaries differ from fp32's on some models,
    # see resolve_dtype); an explicit bf16 is kept
    import torch

    assert devices.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert devices.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_cpu_flags_are_read_from_cpuinfo():
    text = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    flags = devices.cpu_flags()
    assert (not text) or "flags" not in text or flags  # Linux: the flags line is parsed
    assert devices.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert ("bf16 native" if devices.cpu_has_native_bf16() else "bf16 emulated") in devices.cpu_summary()


# --------------------------------------------------------------------------- calibration
def _entry(cfg, fb_rate: float, update_s: float, threads: int = 2, precision: str = "fp32") -> dict:
    return {"key": cal.calibration_key(cfg, precision, threads=threads), "cpu": "test CPU", "threads": threads,
            "precision": precision, "model": "facebook/bart-large", "forward_backward_tokens_per_s": fb_rate,
            "update_seconds": update_s, "real_share": 0.8, "timed_steps": 3, "loadavg": [0.5, 0.6],
            "measured_at": "2026-12-03T00:00:00+00:00"}


def test_rate_for_adds_one_update_per_step():
    e = {"forward_backward_tokens_per_s": 100.0, "update_seconds": 10.0, "real_share": 0.5}
    # 1,000 padded tokens per step -> 500 real tokens: 5 s of forward/backward + 10 s update
    assert cal.rate_for(e, 1000) == pytest.approx(500 / 15)
    assert cal.rate_for(e, 10**9) == pytest.approx(100.0, rel=1e-4)  # huge steps: the update vanishes


def test_a_stored_calibration_changes_the_prediction(cfg, cache, monkeypatch):
    monkeypatch.setattr(cal, "usable_threads", lambda: 2)
    rows_before, meta_before = cost.cost_table(cfg)
    assert meta_before["this_machine"] is None and meta_before["cpu_calibration_fp32"] is None
    before = {r.instance: r for r in rows_before if r.gpus == 0 and r.fits}
    assert all(r.basis.startswith("assumed") for r in before.values())

    entry = _entry(cfg, fb_rate=40.0, update_s=3.0)
    path = cal.store_calibration(entry)
    assert path == cache / cal.CALIBRATION_FILE and json.loads(path.read_text())["version"] == cal.CALIBRATION_VERSION
    rows, meta = cost.cost_table(cfg)
    after = {r.instance: r for r in rows if r.gpus == 0 and r.fits}
    assert set(after) == set(before)
    here_rate = cal.rate_for(entry, cfg.train.batch_tokens)
    for name, r in after.items():
        vcpus = cost.instance_catalog()["instances"][name]["vcpus"]
        assert r.tokens_per_s == pytest.approx(here_rate * cost.cpu_speedup(vcpus, 2))
        assert r.tokens_per_s != pytest.approx(before[name].tokens_per_s)
        assert r.basis.startswith("measured here (fp32, 2 threads)") and "assumed vCPU scaling" in r.basis
    here = meta["this_machine"]
    assert here["tokens_per_s"] == pytest.approx(here_rate)
    assert here["epoch_hours"] == pytest.approx(meta["epoch_tokens"] / here_rate / 3600)

    buf = io.StringIO()
    cost.plan_command(cfg, "cpu:64", cost=True, console=Console(file=buf, width=400))
    text = " ".join(buf.getvalue().split())
    assert f"{here['epoch_hours']:.2f} h per epoch" in text and "this machine's calibration" in text
    assert " ".join(cost.CPU_SCALING_SOURCE.split(";")[0].split()) in text


def test_a_calibration_of_another_key_is_not_used(cfg, cache, monkeypatch):
    monkeypatch.setattr(cal, "usable_threads", lambda: 2)
    cal.store_calibration(_entry(cfg, 40.0, 3.0, threads=16))  # another thread count
    other = load_config(None, [f"data.prepared_dir={cfg.data.prepared_dir}", "train.precision=fp32",
                               "model.gradient_checkpointing=true"])
    cal.store_calibration(_entry(other, 40.0, 3.0))  # another lever
    assert cal.find_calibration(cfg, "fp32") is None
    assert cost.cost_table(cfg)[1]["this_machine"] is None
    assert cal.find_calibration(other, "fp32") is not None


def test_a_corrupt_cache_file_is_ignored(cfg, cache):
    cache.mkdir(parents=True)
    (cache / cal.CALIBRATION_FILE).write_text("{not json")
    assert cal.read_calibrations() == {} and cal.find_calibration(cfg, "fp32") is None


def test_cache_folder_defaults_to_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(cal.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cal.calibration_path() == tmp_path / "xdg" / "threadsum" / cal.CALIBRATION_FILE


def test_tiny_calibration_runs_real_steps_and_is_found(tmp_path, cache):
    pytest.importorskip("torch")
    tiny = load_config(None, [f"data.prepared_dir={tmp_path / 'none'}", "model.init=random", "model.name_or_path=null",
                              "model.tiny.d_model=32", "model.tiny.ffn_dim=64", "model.tiny.vocab_size=300",
                              "data.max_source_tokens=96", "data.max_target_tokens=24", "train.max_tokens=512",
                              "train.batch_tokens=1024", "train.precision=fp32"])
    entry = cal.calibrate(tiny, budget_s=0.2)
    assert entry["timed_steps"] >= cal.MIN_TIMED_STEPS and entry["precision"] == "fp32"
    assert 0 < entry["real_share"] <= 1 and entry["forward_backward_tokens_per_s"] > 0 and entry["update_seconds"] > 0
    assert entry["timed_real_tokens"] > 0 and entry["lengths_from"].startswith("Kaggle-like")
    assert cal.find_calibration(tiny, "fp32")["measured_at"] == entry["measured_at"]
    assert cost.this_machine(tiny)["tokens_per_s"] == pytest.approx(cal.rate_for(entry, 1024))
