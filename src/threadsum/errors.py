"""Exit codes and the error base classes: the one owner of "what went wrong -> which exit code".

Every error threadsum raises on purpose derives from :class:`ThreadsumError` and carries its exit
code, so the command line catches the base class once (``threadsum.cli``) and library code never
calls ``sys.exit``. Messages name the problem and the fix in one line.

Exit codes (every command; ``threadsum train`` uses all of them):

==========  =====  ==========================================================================
name        code   meaning
==========  =====  ==========================================================================
OK          0      success
FAILURE     1      an unexpected failure (a bug or a broken environment); a traceback is shown
USAGE       2      bad configuration or input (a value, a file, a missing extra); one line says
                   which and how to fix it
OOM         3      out of memory even for a single thread per piece (``train``)
DIVERGED    4      training stopped because the loss or gradient norm became non-finite
PREEMPTED   75     SIGTERM or SIGINT: the optimizer step finished and a checkpoint was written;
                   run the same command to resume (sysexits.h EX_TEMPFAIL, "retry later")
ABORTED     130    a second SIGINT: stopped at once, no checkpoint (128 + SIGINT, shell convention)
==========  =====  ==========================================================================
"""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of every ``threadsum`` command (the table in the module docstring)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    OOM = 3
    DIVERGED = 4
    PREEMPTED = 75
    ABORTED = 130


class ThreadsumError(Exception):
    """Base of every error threadsum raises on purpose; ``exit_code`` is what the CLI exits with."""

    exit_code: ExitCode = ExitCode.FAILURE


class UserError(ThreadsumError):
    """The user's configuration, input or environment must change; the message says how (exit 2)."""

    exit_code = ExitCode.USAGE


class ConfigError(UserError, ValueError):
    """A config file, a ``section.key=value`` override or a command-line value is invalid."""


class InputError(UserError, ValueError):
    """A thread, file or request body cannot be summarized as given; the message names what and why."""


class DeviceError(UserError, ValueError):
    """A device, dtype or precision name is unknown or not available on this machine."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency group is not installed; the message names ``pip install 'threadsum[X]'``."""


class OutOfMemoryError(ThreadsumError):
    """Out of memory even for a single thread per piece (the OOM recovery has nothing left to split)."""

    exit_code = ExitCode.OOM


class DivergedError(ThreadsumError):
    """Training diverged: the loss or gradient norm became non-finite, or weights to export hold NaN/inf.
    No checkpoint or model of the bad weights is written (exit 4)."""

    exit_code = ExitCode.DIVERGED


class DrainTimeoutError(ThreadsumError):
    """The service was stopped (SIGTERM) and accepted work was still unfinished when
    ``serve.drain_timeout_s`` ran out; the message says how much (exit 1)."""
