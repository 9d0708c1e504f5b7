"""Rank sharding of the token-budget sampler, the global-batch rule, and the torchrun launcher's pieces."""
import subprocess
import sys

import numpy as np
import pytest

from threadsum.train.batching import TokenBudgetSampler
from threadsum.train.distributed import accumulation_steps, resolve_strategy
from threadsum.train.launch import child_pids, torchrun_command


def _lens(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(5, 400, n), rng.integers(3, 80, n)


def _ranks(world, accumulation, **kw):
    src, tgt = _lens()
    return [TokenBudgetSampler(src, tgt, 1024, 64, 8, seed=5, accumulation=accumulation, rank=r, world_size=world, **kw)
            for r in range(world)]


@pytest.mark.parametrize("world,accumulation", [(2, 1), (2, 3), (4, 2), (3, 1)])
def test_each_epoch_is_dealt_to_ranks_without_duplicates_or_gaps(world, accumulation):
    ranks = _ranks(world, accumulation)
    per_epoch = len(ranks[0].batches_for_epoch(0))
    seen: dict[int, list[int]] = {}
    for _ in range(3 * per_epoch // (world * accumulation) + 2):
        parts = [r.next_step() for r in ranks]
        # the same number of micro-batches per rank per optimizer step: DDP's all-reduce is collective
        assert all(len(p) == accumulation for p in parts)
        assert len({r.epoch for r in ranks}) == 1 and len({r.cursor for r in ranks}) == 1
        global_step = ranks[0].last_step_global
        assert sorted(map(tuple, sum(parts, []))) == sorted(map(tuple, global_step))
        for r, part in enumerate(parts):  # rank r holds every world-th micro-batch of the step
            assert part == global_step[r::world]
        for mb in global_step:
            for i in mb:
                seen.setdefault(i, []).append(1)
    # over whole epochs every thread is trained on once per epoch, on exactly one rank
    src, _ = _lens()
    counts = {len(v) for i, v in seen.items()}
    assert set(seen) == set(range(len(src)))
    assert max(counts) - min(counts) <= 1


def test_two_ranks_take_the_same_global_stream_as_one_process_with_double_accumulation():
    ranks = _ranks(2, 1)
    src, tgt = _lens()
    single = TokenBudgetSampler(src, tgt, 1024, 64, 8, seed=5, accumulation=2)
    for _ in range(25):
        parts = [r.next_step() for r in ranks]
        assert single.next_step() == [parts[0][0], parts[1][0]]


def test_state_resumes_on_another_world_size():
    src, tgt = _lens()
    two = _ranks(2, 2)
    for _ in range(11):
        for r in two:
            r.next_step()
    state = two[0].state_dict()
    assert state == two[1].state_dict()  # ranks agree on the position: one state for the job
    # 4 ranks x 1 micro-batch and 1 rank x 4 take the same 4 micro-batches per step: same fingerprint
    four = _ranks(4, 1)
    one = TokenBudgetSampler(src, tgt, 1024, 64, 8, seed=5, accumulation=4)
    assert one.fingerprint() == four[0].fingerprint() == two[0].fingerprint()
    for s in four + [one]:
        s.load_state_dict(state)
    for _ in range(7):
        parts = [r.next_step() for r in two]
        quarters = [r.next_step() for r in four]
        expected = one.next_step()
        assert sorted(map(tuple, sum(parts, []))) == sorted(map(tuple, expected))
        assert [q[0] for q in quarters] == expected
    # a different global step size changes the data order: the fingerprint says so
    assert _ranks(2, 1)[0].fingerprint() != one.fingerprint()


def test_accumulation_keeps_the_global_batch_on_any_world_size():
    assert accumulation_steps(16384, 4096, 1) == 4
    assert accumulation_steps(16384, 4096, 2) == 2
    assert accumulation_steps(16384, 4096, 4) == 1
    assert accumulation_steps(16384, 4096, 8) == 1  # cannot go below one micro-batch per rank
    assert accumulation_steps(16384, 4096, 3) == 2  # rounds up: 6 micro-batches instead of 4


def test_strategy_resolution():
    assert resolve_strategy("auto", 1) == "single" and resolve_strategy("auto", 2) == "ddp"
    assert resolve_strategy("ddp", 1) == "single" and resolve_strategy("fsdp", 4) == "fsdp"


def test_torchrun_command_is_an_argument_list():
    cmd = torchrun_command("configs/tiny.yaml", ["train.lr=1e-4", "name=a b; rm -rf /"], 4, python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                   "-m", "threadsum", "train", "-c", "configs/tiny.yaml", "train.lr=1e-4", "name=a b; rm -rf /"]
    assert "-c" not in torchrun_command(None, [], 2)
    with pytest.raises(ValueError, match="nproc"):
        torchrun_command(None, [], 0)


def test_child_pids_finds_direct_children():
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess,sys,time; p=subprocess.Popen([sys.executable,'-c','import time; time.sleep(30)']);"
                               "print(p.pid, flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert child_pids(parent.pid) == [child]
        assert child_pids(child) == []
    finally:
        for pid in child_pids(parent.pid):
            subprocess.run(["kill", str(pid)])
        parent.kill()
        parent.wait()
