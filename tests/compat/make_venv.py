"""Build (once) the virtualenv with the oldest transformers pyproject.toml allows; print its path.

    python tests/compat/make_venv.py [VENV] [--torch SPEC] [--pip-torch-args "ARGS"]

VENV defaults to $THREADSUM_COMPAT_VENV, else ~/.cache/threadsum-compat/transformers-oldest. A
finished venv holds a stamp (the torch spec and the requirements); a venv with the same stamp is
reused at once, another is rebuilt (without --torch any torch spec is accepted). torch is installed first (default: the version this Python
runs, so pip never pulls a CUDA build), then oldest-transformers.txt. A lock file keeps two
builders from racing. Exit 0: ready; 3: pip could not reach a package index (the compat test skips
with pip's message); 1: any other failure.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "oldest-transformers.txt"
STAMP = ".threadsum-compat-stamp"
DEFAULT_VENV = Path.home() / ".cache" / "threadsum-compat" / "transformers-oldest"
UNREACHABLE = re.compile(r"(No matching distribution found|Could not find a version that satisfies|"
                         r"NewConnectionError|Network is unreachable|Temporary failure in name resolution|"
                         r"Max retries exceeded|ConnectionError|ReadTimeoutError)", re.I)
EXIT_UNREACHABLE = 3


class Unreachable(RuntimeError):
    """pip could not reach a package index."""


def default_venv() -> Path:
    """$THREADSUM_COMPAT_VENV, else ~/.cache/threadsum-compat/transformers-oldest."""
    return Path(os.environ.get("THREADSUM_COMPAT_VENV") or DEFAULT_VENV).expanduser()


def current_torch_spec() -> str:
    """``torch==X.Y.Z`` of the torch this Python has (the local part, e.g. +cpu, dropped)."""
    from importlib.metadata import version

    return "torch==" + version("torch").split("+")[0]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def stamp_text(torch_spec: str) -> str:
    return f"{torch_spec}\n{REQUIREMENTS.read_text()}"


def is_ready(venv: Path, torch_spec: str | None) -> bool:
    """Built with these requirements (and ``torch_spec``; None: whichever torch it was built with)."""
    stamp = venv / STAMP
    if not (venv_python(venv).exists() and stamp.exists()):
        return False
    text = stamp.read_text()
    if torch_spec is None:
        return text.partition("\n")[2] == REQUIREMENTS.read_text()
    return text == stamp_text(torch_spec)


def _pip(venv: Path, args: list[str]) -> None:
    cmd = [str(venv_python(venv)), "-m", "pip", "install", "-q", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-2000:]
        if UNREACHABLE.search(tail):
            raise Unreachable(f"`{' '.join(cmd)}` could not reach a package index:\n{tail}")
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")


def ensure_venv(venv: Path | None = None, torch_spec: str | None = None, pip_torch_args: str = "") -> Path:
    """The ready venv at ``venv`` (built now if missing or stale). Raises Unreachable or RuntimeError.

    ``torch_spec`` None accepts a venv built with any torch (e.g. by `make compat-venv` with its
    TORCH) and builds with this Python's torch version.
    """
    venv = (venv or default_venv()).expanduser().resolve()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(venv, torch_spec):
            return venv
        torch_spec = torch_spec or current_torch_spec()
        shutil.rmtree(venv, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        _pip(venv, [*shlex.split(pip_torch_args), torch_spec])
        _pip(venv, ["-r", str(REQUIREMENTS)])
        (venv / STAMP).write_text(stamp_text(torch_spec))
        print(f"built {venv} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return venv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venv", nargs="?", type=Path, default=None)
    parser.add_argument("--torch", default=None, help="torch requirement (default: this Python's torch version)")
    parser.add_argument("--pip-torch-args", default="", help="extra pip arguments for torch, e.g. --index-url URL")
    args = parser.parse_args(argv)
    try:
        print(ensure_venv(args.venv, args.torch, args.pip_torch_args))
    except Unreachable as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREACHABLE
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
