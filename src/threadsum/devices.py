"""Device, dtype and precision: resolved here, once, for training, evaluation, planning and serving.

torch is imported inside the functions so that importing this module (the CLI does) stays instant.
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from threadsum.errors import DeviceError

if TYPE_CHECKING:  # pragma: no cover
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Precision names accepted by ``train.precision`` and ``eval.dtype``."""

_DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                "fp16": "float16", "float16": "float16"}


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of CPUs that multiply bf16 in hardware (AVX-512 BF16 dot products, AMX tiles)."""


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags, read once from the first ``flags`` line of /proc/cpuinfo (empty
    where that file or line is missing, e.g. not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (a flag of :data:`NATIVE_BF16_FLAGS` in :func:`cpu_flags`).

    Without it torch emulates bf16 matmuls and bf16 autocast is far slower than fp32 (measured on a
    2-vCPU AVX2-only EPYC: a 1024x1024x1024 matmul 30 GFLOP/s in fp32, 0.5 in bf16; BENCHMARKS.md),
    so ``auto`` picks fp32 there. This is the one rule every ``auto`` precision and dtype follows.
    """
    return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` or the machine type elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_summary() -> str:
    """One line for benchmark and calibration records: CPU model, logical cores, the bf16/VNNI/AMX
    flags it has, and whether bf16 is native or emulated here."""
    shown = sorted(f for f in cpu_flags() if "bf16" in f or "vnni" in f or f.startswith("amx") or f == "avx512f")
    isa = "AVX-512" if "avx512f" in cpu_flags() else "AVX2" if "avx2" in cpu_flags() else "no AVX2"
    return (f"{cpu_model_name()}, {os.cpu_count()} logical cores, {isa}; flags: {' '.join(shown) or 'none of avx512_bf16/amx/vnni'}; "
            f"bf16 {'native' if cpu_has_native_bf16() else 'emulated (no avx512_bf16/amx_bf16)'}")


def auto_precision(device_kind: str, bf16_supported: bool) -> str:
    """The precision ``auto`` means: bf16 where the device has it natively, else fp16 on GPUs, fp32 on CPUs.

    Args:
        device_kind: "cuda", "cpu" or "mps".
        bf16_supported: the device computes bf16 natively (Ampere or newer; avx512_bf16/AMX CPUs).
    Returns: "bf16", "fp16" or "fp32".
    """
    if bf16_supported:
        return "bf16"
    return "fp16" if device_kind == "cuda" else "fp32"


def resolve_device(name: str = "auto") -> "torch.device":
    """The torch device for ``name``: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N", "mps".

    Raises:
        DeviceError: the name is not a torch device, or names a device this machine does not have.
    """
    import torch

    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device '{name}' is not a torch device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{name}' was asked for but CUDA is not available here; use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s); "
                              f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"device '{name}' was asked for but MPS is not available here; use cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device '{name}' is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


def bf16_supported(device: "torch.device") -> bool:
    """Whether ``device`` computes bf16 natively (see :func:`cpu_has_native_bf16` for CPUs)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(requested: str, device: "torch.device | str") -> str:
    """Training precision for ``train.precision`` on ``device``: "fp32", "bf16" or "fp16" (never "auto").

    ``device`` is a torch device or its type ("cuda", "cpu", "mps"). fp16 uses a GradScaler (see
    the training step). Raises:
        DeviceError: an unknown precision name.
    """
    import torch

    if requested not in PRECISIONS:
        raise DeviceError(f"precision '{requested}' is not supported; use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    dev = torch.device(device) if isinstance(device, str) else device
    return auto_precision(dev.type, bf16_supported(dev))


def resolve_dtype(name: Any, device: "torch.device") -> "torch.dtype":
    """The weights dtype for inference: a torch dtype, or "auto"/None (bf16 on GPUs that compute it
    natively, else fp32), "fp32", "bf16", "fp16" (and the long names "float32", ...).

    Why CPUs stay fp32 under "auto" even with native bf16: the rule for "auto" is the fastest dtype
    whose summaries equal fp32's, and that depends on the model. At the BART-base shape on a CPU with
    avx512_bf16, bf16 gave fp32's tokens on 16 of 16 threads at 1.63x the batched speed
    (BENCHMARKS.md, "Inference engines"), but on the small seq2seq and causal models of the test
    suite bf16 summaries differ from fp32's (their CTranslate2-equals-torch checks fail with a bf16
    torch side). Set ``inference.dtype=bf16`` to take the speed where your model's summaries hold
    up (``threadsum evaluate`` both ways); CTranslate2 int8 is faster still (4.65x torch bf16 batched).
    Raises:
        DeviceError: an unknown dtype name.
    """
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        return torch.bfloat16 if device.type == "cuda" and bf16_supported(device) else torch.float32
    long_name = _DTYPE_NAMES.get(str(name).lower())
    if long_name is None:
        raise DeviceError(f"dtype '{name}' is not supported; use auto, fp32, bf16 or fp16")
    return getattr(torch, long_name)


def hardware_description(device: Optional["torch.device"] = None) -> str:
    """One line naming the accelerator or CPU model, core count and torch version (for records and benchmarks)."""
    import torch

    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"{n} x {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"CPU: {cpu_model_name()}, {os.cpu_count()} logical cores (torch {torch.__version__})"
