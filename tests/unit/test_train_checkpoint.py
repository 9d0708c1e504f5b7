"""TrainState: atomic save, whole-state round trip, completeness marker, pruning, config differences."""
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from threadsum.train import checkpoint  # noqa: E402
from threadsum.train.batching import TokenBudgetSampler  # noqa: E402
from threadsum.train.checkpoint import (  # noqa: E402
    CheckpointError,
    TrainState,
    config_differences,
    list_checkpoints,
    plain,
)


def _state(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    src, tgt = np.arange(5, 50), np.arange(3, 48)
    sampler = TokenBudgetSampler(src, tgt, 256, 8, 8, seed=1, accumulation=2)
    return TrainState(model=model, optimizer=opt, scheduler=sched, sampler=sampler,
                      config={"train": {"lr": 0.01, "output_dir": "a"}})


def _train_step(st):
    loss = st.model(torch.randn(3, 4)).pow(2).sum()
    loss.backward()
    st.optimizer.step()
    st.scheduler.step()
    st.optimizer.zero_grad()
    st.sampler.next_step()
    st.counters.step += 1


def test_round_trip_restores_everything_and_continues_identically(tmp_path):
    a = _state()
    for _ in range(3):
        _train_step(a)
    plain.save(a, tmp_path, keep_last=2)
    for _ in range(2):
        _train_step(a)
    after_a = [p.detach().clone() for p in a.model.parameters()]

    expected_sampler = _state_after(3)
    b = _state(seed=99)  # different init and RNG: everything must come from the checkpoint
    random.seed(5)
    assert checkpoint.load(b, tmp_path / "step-00000003") == []
    assert b.counters.step == 3 and b.sampler.state_dict() == expected_sampler
    for _ in range(2):
        _train_step(b)
    for x, y in zip(after_a, b.model.parameters()):
        assert torch.equal(x, y)


def _state_after(n):
    s = _state()
    for _ in range(n):
        s.sampler.next_step()
    return s.sampler.state_dict()


def test_keep_last_plus_best_and_marker(tmp_path):
    st = _state()
    for step in range(1, 7):
        _train_step(st)
        if step == 2:
            st.counters.best_step = 2
        plain.save(st, tmp_path, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 5, 6]
    (tmp_path / "step-00000006" / "model.safetensors").write_bytes(b"torn")  # size no longer matches the marker
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 5]
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        checkpoint.load(_state(), tmp_path / "step-00000006")


def test_config_differences_name_settings_that_matter():
    saved = {"train": {"lr": 0.01, "output_dir": "a", "keep_last": 2}, "eval": {"split": "test"}}
    now = {"train": {"lr": 0.02, "output_dir": "b", "keep_last": 5}, "eval": {"split": "validation"}}
    assert config_differences(saved, now) == ["train.lr: 0.01 -> 0.02"]
