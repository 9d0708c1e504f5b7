"""``threadsum train --nproc N``: start torchrun for the user, one node, N processes.

It runs, as a list of arguments (never through a shell)::

    python -m torch.distributed.run --standalone --nproc-per-node N -m threadsum train -c CONFIG [overrides...]

``--standalone`` lets torchrun pick a free local port, so two jobs on one machine do not collide.
Other launches use the same ``threadsum train`` command unchanged (see docs/distributed.md)::

    # several nodes: run on every node, the same endpoint everywhere, its own --node-rank on each
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29500 --rdzv-id RUN_NAME -m threadsum train -c configs/bart-large.yaml
    # accelerate's launcher (it reads its own config from `accelerate config`)
    accelerate launch --num-processes 4 -m threadsum train -c configs/bart-large.yaml

Signals: the workers run in a session of their own, so a terminal's Ctrl-C reaches this launcher
only; SIGTERM and SIGINT are forwarded once per signal to every worker (not to torchrun, which
would SIGKILL workers still writing their checkpoint after 30 s). A second Ctrl-C forwards a second
SIGINT, which aborts the workers at once. Preempted workers exit 75 each; torchrun reports that
as a failure (exit 1), so the launcher reads the run record and returns 75 (ExitCode.PREEMPTED) when
the run stopped with a checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("threadsum.train")
from threadsum.errors import ConfigError


def torchrun_command(config_path: Optional[str | Path], overrides: Sequence[str], nproc: int,
                     python: Optional[str] = None) -> list[str]:
    """The argument list that runs ``threadsum train`` on ``nproc`` local processes under torchrun."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    cmd = [python or sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "threadsum", "train"]
    if config_path:
        cmd += ["-c", str(config_path)]
    return cmd + [str(o) for o in overrides]


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc); torchrun's workers are its direct children."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (2nd field) may hold spaces and parentheses: split after its closing ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def _forward(proc: subprocess.Popen, signum: int) -> None:
    workers = child_pids(proc.pid)
    targets = workers or [proc.pid]  # workers not started yet: torchrun will pass it on
    for pid in targets:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    log.warning("forwarded %s to %s", signal.Signals(signum).name,
                f"workers {workers}" if workers else f"torchrun (pid {proc.pid})")


def _preempted_since(output_dir: Optional[Path], started: float) -> bool:
    """The run record of ``output_dir`` says this launch stopped with a checkpoint (exit 75 per rank)."""
    if output_dir is None:
        return False
    record = output_dir / "run.json"
    try:
        if record.stat().st_mtime < started:
            return False
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return data.get("status") == "KILLED" and str(data.get("cause", "")).startswith("preempted")


def launch_torchrun(config_path: Optional[str | Path], overrides: Sequence[str], nproc: int) -> int:
    """Run ``threadsum train`` on ``nproc`` local processes; returns the training exit code."""
    from threadsum.config import load_config
    from threadsum.errors import ExitCode

    cfg = load_config(config_path, list(overrides))  # fail here, once, on a bad config
    output_dir = Path(cfg.train.output_dir)
    cmd = torchrun_command(config_path, overrides, nproc)
    log.info("starting: %s", " ".join(cmd))
    env = dict(os.environ)
    # torchrun warns and defaults to 1 thread per worker; share the cores explicitly instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    signalled: list[int] = []

    def handle(signum, frame):
        signalled.append(signum)
        _forward(proc, signum)

    old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except InterruptedError:  # pragma: no cover - wait() retries on EINTR since 3.5
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc != 0 and _preempted_since(output_dir, started):
        return int(ExitCode.PREEMPTED)
    if rc < 0:  # torchrun itself died of a signal
        return 128 - rc
    return rc


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m threadsum.train.launch NPROC CONFIG [overrides...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(__doc__)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return launch_torchrun(argv[1] if len(argv) > 1 else None, argv[2:], int(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
