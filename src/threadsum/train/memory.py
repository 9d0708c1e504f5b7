"""Memory planner: predict the peak memory of a training step, list the levers that fit, auto-fit.

The prediction is arithmetic over the model's architecture (no model is built), following what
PyTorch actually keeps alive during one optimizer step. Three moments compete for the peak:

* the end of the forward (with checkpointing, the autocast cache still holds every bf16 weight copy);
* every point of the backward, walked node by node: activations are freed layer by layer while
  fp32 gradients are allocated layer by layer; with gradient accumulation (batch_tokens >
  max_tokens) all gradients already exist from the previous micro-batch;
* the optimizer step (all gradients + optimizer scratch).

Parts: fp32 master weights (+ final_logits_bias); fp32 gradients of the trainable parameters
(4 B/param); optimizer states (AdamW 8 B/param, 8-bit AdamW ~2 B/param, Adafactor rows + columns);
activations counted per op of a BART layer (see ``_activations``); the loss head (fp32
log-softmax over the vocabulary and its gradients); on CUDA the context (assumed 0.75 GiB) and
allocator fragmentation (assumed 15%), which max_memory_allocated does not show.

Calibration: ``bench/calibrate_memory.py`` measures CPU peaks (RSS); three BART-large anchors
measured on an H200 (max_memory_allocated) check the CUDA side, with one empirical factor derived
from one of them (``CUDA_ACTIVATION_FACTOR``). ``tests/unit/test_plan_memory.py`` holds every point
to 15%; ``bench/results_plan.md`` lists them.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from threadsum.config import Config
from threadsum.devices import auto_precision, cpu_has_native_bf16
from threadsum.errors import UserError

GiB = 1024**3
MiB = 1024**2

# CPU: RSS a step adds beyond the counted tensors: the autograd graph, oneDNN scratch, gradient
# temporaries before they are accumulated, and glibc arenas. It grows with the model, not the
# batch: the calibration implies 55-118 MB at 19.4M params and 25-43 MB at 6.3M params
# (bench/results_plan.md), so it is charged per parameter: 80 MiB per 19.36M params (~4.3 B/param,
# about one more fp32 copy of the weights).
CPU_OVERHEAD_PER_PARAM = 80 * MiB / 19_356_672
# CUDA: the context with its loaded kernels (~0.3-0.6 GiB with lazy module loading), cuBLAS/cuBLASLt
# workspaces (tens of MiB per stream) and cuDNN/NCCL handles; they live outside
# max_memory_allocated but count against the card. Assumed, not measured here (0.5-1 GiB is typical).
CUDA_CONTEXT_BYTES = int(0.75 * GiB)
# Reserved minus allocated memory of PyTorch's caching allocator when every micro-batch has a new
# shape (token-budget batching): freed blocks are cached but too small or split for the next shape.
# Assumed 15% of the step's activations and temporaries (10-20% is the usual range); the anchors
# measured only max_memory_allocated, so this part is not checked by them.
CUDA_FRAGMENTATION = 0.15
# Empirical: the op-by-op count above misses part of what CUDA holds during a step (allocator
# block rounding, kernel workspaces, tensors whose lifetime the op list does not show). Derived
# from ONE anchor, BART-large bf16 + gradient checkpointing at a 16k token budget on an H200:
# measured 15.6 GiB allocated, of which 4.54 GiB weights + AdamW state; the count gives 8.52 GiB
# of activations + temporaries for the rest, 11.06 / 8.52 = 1.30. Checked against the other two
# anchors in bench/results_plan.md and tests/unit/test_plan_memory.py. Multiplies activations and
# temporaries on CUDA only (CPU is calibrated directly).
CUDA_ACTIVATION_FACTOR = 1.30
# Share of the device kept free for length outliers and memory this model does not count.
HEADROOM = {"cuda": 0.10, "cpu": 0.15}
# A process that imported torch + transformers already holds this much RAM.
CPU_PROCESS_BASE_BYTES = int(0.5 * GiB)

# Relative throughput of each lever (1.0 = no change); stated in `threadsum plan` output.
SPEED = {
    "gradient_checkpointing": 0.75,  # one extra forward per step: about +33% compute
    "adafactor": 0.97,
    "adamw8bit": 0.97,
    "cpu_offload": 0.35,  # parameters and optimizer cross PCIe every step
    "lora": 1.6,  # measured: LoRA r16 98k vs 45.6k tokens/s full fine-tune on an H200 (not auto-picked)
}
LOWP_SPEEDUP = {"cuda": 2.0, "cpu": 2.2}  # bf16/fp16 tensor cores; CPU with avx512_bf16/AMX (measured 240 vs 105 tok/s)


class PlanError(UserError, ValueError):
    """A device or model cannot be planned; the message says what to pass instead."""


# ------------------------------------------------------------------------------- resources
def _resource(name: str) -> dict[str, Any]:
    text = resources.files("threadsum").joinpath("resources", name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


@lru_cache(maxsize=None)
def gpu_catalog() -> dict[str, dict[str, Any]]:
    """GPUs the planner knows, from ``resources/gpus.yaml`` (read once, cached).

    Returns:
        ``{name: {memory_gib, bf16, tflops_lp, tflops_fp32, marketed}}``: memory in GiB as
        ``torch.cuda.get_device_properties`` reports it, peak dense TFLOP/s from the vendors'
        data sheets (``tflops_lp``: bf16 where ``bf16`` is true, else fp16).
    """
    return _resource("gpus.yaml")


@lru_cache(maxsize=None)
def known_models() -> dict[str, Any]:
    """Architectures of the pretrained models known offline, from ``resources/models.yaml`` (cached).

    Returns:
        ``{hub_id: config.json fields}`` copied from each model's config on the Hugging Face hub,
        plus ``"aliases": {alias: hub_id}`` for ids that share an architecture.
    """
    return _resource("models.yaml")


# ---------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelSpec:
    """The architecture numbers that decide memory (BART-style encoder-decoder, tied lm_head)."""

    name: str
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    vocab_size: int
    max_positions: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0

    @classmethod
    def from_hf_config(cls, name: str, c: dict[str, Any]) -> "ModelSpec":
        """Read a BART-style ``config.json`` mapping (``d_model``, ``encoder_layers``, ``encoder_ffn_dim``, ...).

        Missing optional keys take BART's defaults (1,024 positions, dropout 0.1).

        Raises:
            PlanError: a required key is missing (the config is not BART-style).
        """
        try:
            return cls(
                name=name,
                d_model=int(c["d_model"]),
                encoder_layers=int(c["encoder_layers"]),
                decoder_layers=int(c["decoder_layers"]),
                encoder_heads=int(c["encoder_attention_heads"]),
                decoder_heads=int(c["decoder_attention_heads"]),
                encoder_ffn=int(c["encoder_ffn_dim"]),
                decoder_ffn=int(c["decoder_ffn_dim"]),
                vocab_size=int(c["vocab_size"]),
                max_positions=int(c.get("max_position_embeddings", 1024)),
                dropout=float(c.get("dropout", 0.1)),
                attention_dropout=float(c.get("attention_dropout", 0.0)),
                activation_dropout=float(c.get("activation_dropout", 0.0)),
            )
        except KeyError as exc:
            raise PlanError(
                f"model config of '{name}' lacks {exc}; the planner understands BART-style configs "
                f"(d_model, encoder_layers, encoder_ffn_dim, ...)"
            ) from None

    # parameter counts (BartForConditionalGeneration; lm_head is tied to the shared embedding)
    def _attn(self) -> int:
        return 4 * (self.d_model**2 + self.d_model)

    def _ffn(self, f: int) -> int:
        return 2 * self.d_model * f + f + self.d_model

    def encoder_layer_params(self) -> int:
        """Parameters of one encoder layer: self-attention (4 d x d + bias), FFN, 2 LayerNorms."""
        return self._attn() + self._ffn(self.encoder_ffn) + 4 * self.d_model

    def decoder_layer_params(self) -> int:
        """Parameters of one decoder layer: self- and cross-attention, FFN, 3 LayerNorms."""
        return 2 * self._attn() + self._ffn(self.decoder_ffn) + 6 * self.d_model

    def embedding_params(self) -> int:
        """Parameters of the shared token embedding (vocab x d_model), tied to ``lm_head``."""
        return self.vocab_size * self.d_model

    def params(self) -> int:
        """All parameters of ``BartForConditionalGeneration``: embeddings, learned positions
        (``max_positions + 2`` rows each, BART's offset), layer-norms and every layer; the tied
        ``lm_head`` is counted once and the ``final_logits_bias`` buffer is not a parameter."""
        d = self.d_model
        positions = 2 * (self.max_positions + 2) * d
        return (self.embedding_params() + positions + 4 * d
                + self.encoder_layers * self.encoder_layer_params()
                + self.decoder_layers * self.decoder_layer_params())

    def linear_weights(self) -> int:
        """Elements of every matmul weight (autocast casts each one to bf16/fp16 and saves the copy)."""
        d = self.d_model
        enc = 4 * d * d + 2 * d * self.encoder_ffn
        dec = 8 * d * d + 2 * d * self.decoder_ffn
        return self.encoder_layers * enc + self.decoder_layers * dec + self.vocab_size * d

    def largest_param(self) -> int:
        """Elements of the largest single parameter (the embedding or an FFN matrix): sizes
        Adafactor's full-size update scratch."""
        return max(self.vocab_size * self.d_model, self.d_model * max(self.encoder_ffn, self.decoder_ffn))

    def matrices(self) -> list[tuple[int, int]]:
        """(rows, cols) of each 2-D parameter, for Adafactor's factored state."""
        d = self.d_model
        out = [(self.vocab_size, d), (self.max_positions + 2, d), (self.max_positions + 2, d)]
        for _ in range(self.encoder_layers):
            out += [(d, d)] * 4 + [(self.encoder_ffn, d), (d, self.encoder_ffn)]
        for _ in range(self.decoder_layers):
            out += [(d, d)] * 8 + [(self.decoder_ffn, d), (d, self.decoder_ffn)]
        return out

    def lora_params(self, r: int, targets: list[str]) -> int:
        """Trainable parameters of LoRA adapters of rank ``r`` on the named modules.

        Each adapted ``Linear(in, out)`` adds ``r * (in + out)`` (peft's A and B matrices, no bias);
        decoder layers have two attention blocks (self and cross). Unknown target names add nothing.
        """
        d, t = self.d_model, set(targets)
        attn = sum(r * 2 * d for m in ("q_proj", "k_proj", "v_proj", "out_proj") if m in t)

        def ffn(f: int) -> int:
            return (r * (d + f) if "fc1" in t else 0) + (r * (f + d) if "fc2" in t else 0)

        return self.encoder_layers * (attn + ffn(self.encoder_ffn)) + self.decoder_layers * (2 * attn + ffn(self.decoder_ffn))


def model_spec(cfg: Config) -> ModelSpec:
    """The architecture of cfg's model: the tiny section, a local config.json, or a known hub id.

    No network access and no model is built: ``model.init='random'`` reads ``model.tiny``; otherwise
    ``model.name_or_path`` is a local folder with ``config.json`` or a key/alias of
    :func:`known_models`.

    Raises:
        PlanError: the name is neither a local model folder nor a known hub id, or its config is
            not BART-style.
        json.JSONDecodeError: a local ``config.json`` is not valid JSON.
    """
    m = cfg.model
    if m.init == "random":
        t = m.tiny
        return ModelSpec(
            name=f"random d{t.d_model} L{t.encoder_layers}+{t.decoder_layers}",
            d_model=t.d_model, encoder_layers=t.encoder_layers, decoder_layers=t.decoder_layers,
            encoder_heads=t.attention_heads, decoder_heads=t.attention_heads,
            encoder_ffn=t.ffn_dim, decoder_ffn=t.ffn_dim, vocab_size=t.vocab_size,
            max_positions=t.max_position_embeddings, dropout=t.dropout,
        )
    name = m.name_or_path or ""
    local = Path(name).expanduser()
    if (local / "config.json").is_file():
        return ModelSpec.from_hf_config(name, json.loads((local / "config.json").read_text()))
    models = known_models()
    key = models.get("aliases", {}).get(name, name)
    if key in models and key != "aliases":
        return ModelSpec.from_hf_config(name, models[key])
    known = ", ".join(k for k in models if k != "aliases")
    raise PlanError(
        f"no architecture known for model.name_or_path='{name}': point it at a local folder with "
        f"config.json, or use one of: {known}"
    )


# --------------------------------------------------------------------------------- device
@dataclass(frozen=True)
class Device:
    """A device to plan for: ``kind`` 'cuda' or 'cpu', ``memory_bytes`` in bytes (RAM for CPU), whether
    it computes in bf16, and peak dense TFLOP/s (low precision, fp32; 0 when unknown)."""

    name: str
    kind: str  # "cuda" or "cpu"
    memory_bytes: int
    bf16: bool = True
    tflops_lp: float = 0.0
    tflops_fp32: float = 0.0

    @property
    def memory_gib(self) -> float:
        """Device memory in GiB (2**30 bytes)."""
        return self.memory_bytes / GiB


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower()).removesuffix("gb")


_GPU_ALIASES = {"a100": "A100-80", "v100": "V100-16", "h100": "H100-80", "h200141": "H200"}


def _catalog_device(key: str) -> Device:
    g = gpu_catalog()[key]
    return Device(key, "cuda", int(g["memory_gib"] * GiB), bool(g["bf16"]), float(g["tflops_lp"]), float(g["tflops_fp32"]))


def _system_ram_bytes() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and 0 < int(raw) < total:
            total = int(raw)
    return total


def resolve_device(name: str) -> Device:
    """Turn a device name into a :class:`Device`: 'H100', 'a100-40', 'T4', 'cpu', 'cpu:24' (GiB of RAM),
    'gpu:24' (any GPU with 24 GiB), 'auto'.

    Catalogue names (:func:`gpu_catalog`) match case- and punctuation-insensitively, by prefix
    ('a100' -> A100-80). 'auto' is this machine: CUDA device 0 (a catalogue entry when its name
    matches and its memory is within 6 GiB, else its reported memory with bf16 from compute
    capability >= 8), otherwise the CPU with the physical RAM, capped by the cgroup memory limit.
    'cpu' without a size is this machine's RAM; 'cpu:<GiB>' assumes no native bf16.

    Raises:
        PlanError: an unknown name or a size that is not a number of GiB.
    """
    text = name.strip()
    low = text.lower()
    if low == "auto":
        try:
            import torch

            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                for key in sorted(gpu_catalog(), key=len, reverse=True):
                    base = _norm(key.split("-")[0])
                    if base in _norm(props.name) and abs(gpu_catalog()[key]["memory_gib"] * GiB - props.total_memory) < 6 * GiB:
                        return replace(_catalog_device(key), memory_bytes=props.total_memory)
                major, _ = torch.cuda.get_device_capability(0)
                return Device(props.name, "cuda", props.total_memory, major >= 8)
        except ImportError:
            pass
        return Device(f"cpu ({_system_ram_bytes() / GiB:.0f} GiB, this machine)", "cpu", _system_ram_bytes(), cpu_has_native_bf16())
    if low.startswith("cpu"):
        rest = low[3:].lstrip(":")
        if not rest:
            return Device(f"cpu ({_system_ram_bytes() / GiB:.0f} GiB, this machine)", "cpu", _system_ram_bytes(), cpu_has_native_bf16())
        try:
            gib = float(rest.removesuffix("gb").removesuffix("gib"))
        except ValueError:
            raise PlanError(f"device '{name}': write the RAM size in GiB, e.g. cpu:24") from None
        return Device(f"cpu ({gib:g} GiB)", "cpu", int(gib * GiB), False)
    if low.startswith("gpu:") or low.startswith("cuda:"):
        try:
            gib = float(low.split(":", 1)[1].removesuffix("gb").removesuffix("gib"))
        except ValueError:
            raise PlanError(f"device '{name}': write the GPU memory in GiB, e.g. gpu:24") from None
        return Device(f"GPU ({gib:g} GiB)", "cuda", int(gib * GiB), True)
    key = _norm(text)
    by_norm = {_norm(k): k for k in gpu_catalog()}
    hit = by_norm.get(key) or _GPU_ALIASES.get(key)
    if hit is None:
        for alias_norm, k in by_norm.items():  # 'a10040' -> 'A100-40'; 'h100' -> 'H100-80'
            if alias_norm.startswith(key) and len(key) >= 2:
                hit = k
                break
    if hit is None:
        raise PlanError(
            f"unknown device '{name}'. Use one of {', '.join(gpu_catalog())}, 'cpu', 'cpu:<GiB>', "
            f"'gpu:<GiB>' or 'auto' (this machine)"
        )
    return _catalog_device(hit)


# ---------------------------------------------------------------------------------- levers
@dataclass(frozen=True)
class Levers:
    """Settings that change a step's memory (``precision`` resolved, never 'auto'; ``ranks``: FSDP
    processes sharing the model; ``loss_chunk_tokens``: target tokens per chunk of the chunked
    LM-head loss, 0 = full logits)."""

    precision: str = "fp32"  # fp32 | bf16 | fp16 (resolved, never 'auto')
    optimizer: str = "adamw"
    gradient_checkpointing: bool = False
    lora: bool = False
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    freeze_embeddings: bool = False
    attn: str = "sdpa"
    ranks: int = 1
    cpu_offload: bool = False
    # a loop that keeps ``logits`` alive through backward pays +4 B x vocab per target token.
    # threadsum's loop now frees them before backward; the default stays True (a safe overestimate)
    # because the CPU calibration points were measured with the logits held
    hold_logits: bool = True
    # chunked LM-head loss (train/loss.py): target tokens per chunk, 0 = the full-logits path
    loss_chunk_tokens: int = 0

    @property
    def amp(self) -> bool:
        """True when the step runs under bf16/fp16 autocast (fp32 master weights, low-precision copies)."""
        return self.precision in ("bf16", "fp16")


def resolve_precision(precision: str, device: Device) -> str:
    """The precision a plan assumes for ``train.precision`` on a catalogue device (the rule of
    :func:`threadsum.devices.auto_precision`)."""
    return auto_precision(device.kind, device.bf16) if precision == "auto" else precision


def levers_from_config(cfg: Config, device: Device, ranks: int = 1, cpu_offload: bool = False) -> Levers:
    """The levers cfg sets for ``device``: 'auto' precision resolved (:func:`resolve_precision`).

    Args:
        ranks: processes sharing the model with FSDP (1: single process).
        cpu_offload: FSDP keeps parameters and optimizer state in host RAM.

    The chunked loss is assumed only when ``ranks == 1``, as the training loop uses it only in
    single-process training (``train/loss.py``).
    """
    m, t = cfg.model, cfg.train
    return Levers(
        precision=resolve_precision(t.precision, device),
        optimizer=t.optimizer,
        gradient_checkpointing=m.gradient_checkpointing,
        lora=m.lora.enabled,
        lora_r=m.lora.r,
        lora_targets=tuple(m.lora.target_modules),
        freeze_embeddings=m.freeze_embeddings,
        attn=m.attn_implementation or "sdpa",
        ranks=ranks,
        cpu_offload=cpu_offload,
        # the chunked loss runs in single-process training only (see train/loss.py)
        loss_chunk_tokens=t.loss_chunk_tokens if ranks == 1 and t.strategy != "fsdp" else 0,
    )


@dataclass(frozen=True)
class Workload:
    """Shape of the largest micro-batch: ``batch`` sequences of src_len + tgt_len padded tokens.

    ``accumulation`` > 1 means the gradients of earlier micro-batches of the same optimizer step
    stay allocated while this one runs forward and backward.
    """

    batch: float
    src_len: int
    tgt_len: int
    accumulation: int = 1

    @property
    def src_tokens(self) -> float:
        """Source tokens of the micro-batch, padding included (batch x src_len)."""
        return self.batch * self.src_len

    @property
    def tgt_tokens(self) -> float:
        """Target tokens of the micro-batch, padding included (batch x tgt_len)."""
        return self.batch * self.tgt_len

    @property
    def tokens(self) -> float:
        """All tokens of the micro-batch (source + target, padded)."""
        return self.src_tokens + self.tgt_tokens


def workload_from_config(cfg: Config, max_tokens: Optional[int] = None) -> Workload:
    """Worst case of the token-budget sampler: every thread at the longest source and summary.

    A micro-batch holds at least one thread even when the budget is smaller than one thread.
    Accumulation follows the training loop: ceil(train.batch_tokens / max_tokens) micro-batches
    per optimizer step.

    Args:
        cfg: lengths come from ``data.max_source_tokens`` / ``data.max_target_tokens`` rounded up to
            ``train.pad_to_multiple_of``; threads per micro-batch are capped by ``train.max_batch_size``.
        max_tokens: micro-batch budget in tokens (source + target); None: ``train.max_tokens``.
    """
    mult = cfg.train.pad_to_multiple_of
    src = math.ceil(cfg.data.max_source_tokens / mult) * mult
    tgt = math.ceil(cfg.data.max_target_tokens / mult) * mult
    budget = max_tokens if max_tokens is not None else cfg.train.max_tokens
    batch = min(max(1, budget // (src + tgt)), cfg.train.max_batch_size)
    accumulation = max(1, math.ceil(cfg.train.batch_tokens / max(1, budget)))
    return Workload(batch=batch, src_len=src, tgt_len=tgt, accumulation=accumulation)


# ---------------------------------------------------------------------------- the estimate
@dataclass
class MemoryPlan:
    """Predicted peak of one training step on one device (per rank), with its parts in bytes.

    ``peak`` is what the device must hold: on CUDA the allocated tensors (``allocated``, what
    ``torch.cuda.max_memory_allocated`` reports) + allocator fragmentation + the CUDA context;
    on CPU the growth of the process RSS during a step.

    Every size field (``weights``, ``gradients``, ``optimizer``, ``activations``, ``temporary``,
    ``overhead``, ``fragmentation``, ``peak``, ``gradients_total``, ``host_bytes``) is in bytes;
    ``params`` / ``trainable_params`` are parameter counts; ``phase`` names the moment of the peak
    ('end of forward', 'start of backward', 'backward', 'end of backward', 'optimizer step');
    ``host_bytes`` is host RAM per rank with FSDP CPU offload.
    """

    device: Device
    model: ModelSpec
    levers: Levers
    workload: Workload
    params: int
    trainable_params: int
    weights: float
    gradients: float  # live at the peak
    optimizer: float
    activations: float  # live at the peak
    temporary: float
    overhead: float
    peak: float
    fragmentation: float = 0.0
    gradients_total: float = 0.0  # fp32 gradients of every trainable parameter (4 B/param)
    phase: str = ""
    host_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def allocated(self) -> float:
        """Predicted peak of allocated tensors (CUDA: ``max_memory_allocated``)."""
        return self.peak - self.overhead - self.fragmentation

    @property
    def capacity(self) -> float:
        """Bytes the step may use on the device, after headroom (and, on CPU, the process itself)."""
        cap = self.device.memory_bytes * (1 - HEADROOM[self.device.kind])
        if self.device.kind == "cpu":
            cap -= CPU_PROCESS_BASE_BYTES
        return cap

    @property
    def fits(self) -> bool:
        """True when the predicted ``peak`` (bytes) is within :attr:`capacity` (bytes)."""
        return self.peak <= self.capacity

    @property
    def utilization(self) -> float:
        """Predicted peak as a share of the device's whole memory (1.0 = all of it, headroom ignored)."""
        return self.peak / self.device.memory_bytes

    def breakdown(self) -> list[tuple[str, float, str]]:
        """Rows ``(part, bytes, explanation)`` for ``threadsum plan``: weights, gradients, optimizer
        states, activations, temporary buffers, then fragmentation (CUDA) and fixed overhead; they
        sum to ``peak``."""
        lv, w = self.levers, self.workload
        opt_note = {"adamw": "2 fp32 moments, 8 B/param", "adamw8bit": "2 int8 moments + scales",
                    "adafactor": "factored 2nd moment"}[lv.optimizer]
        if w.accumulation > 1:
            grad_note = f"all kept across {w.accumulation} accumulated micro-batches"
        elif self.gradients < self.gradients_total - 1:
            grad_note = f"{self.gradients_total / GiB:.2f} GiB in all; this much is allocated at the peak ({self.phase})"
        else:
            grad_note = "all allocated at the peak"
        kind = self.device.kind
        rows = [
            ("weights", self.weights, f"{self.params / 1e6:.1f}M params, fp32 master copy" + (" (1/N shard)" if lv.ranks > 1 else "")),
            ("gradients", self.gradients, f"{self.trainable_params / 1e6:.2f}M trainable x 4 B (fp32); {grad_note}"),
            ("optimizer states", self.optimizer, f"{lv.optimizer}: {opt_note}"),
            ("activations", self.activations,
             f"{w.batch:g} x ({w.src_len}+{w.tgt_len}) tokens, {lv.precision}"
             + (", checkpointed" if lv.gradient_checkpointing else "") + (" + bf16/fp16 weight copies" if lv.amp else "")
             + (f"; CUDA factor {CUDA_ACTIVATION_FACTOR:g} included" if kind == "cuda" else "")),
            ("temporary buffers", self.temporary,
             ("chunked loss: no logit gradients at backward start" if self.levers.loss_chunk_tokens
              else "logit gradients (backward start)") + " / optimizer scratch"),
        ]
        if kind == "cuda":
            rows.append(("allocator fragmentation", self.fragmentation,
                         f"{CUDA_FRAGMENTATION:.0%} of activations+temporaries: cached blocks that changing shapes cannot reuse"))
            rows.append(("fixed overhead", self.overhead, "CUDA context, kernels, cuBLAS/cuDNN workspaces (assumed)"))
        else:
            rows.append(("fixed overhead", self.overhead, "autograd graph, oneDNN scratch, gradient temporaries, malloc arenas (~4.3 B/param, measured)"))
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the ``plan`` entry of ``threadsum plan``'s result): sizes in GiB (``*_gib``), the workload
        (threads, padded lengths in tokens, accumulation) and the levers."""
        return {
            "device": self.device.name, "capacity_gib": self.capacity / GiB, "peak_gib": self.peak / GiB,
            "allocated_gib": self.allocated / GiB, "fits": self.fits, "phase": self.phase,
            "parts_gib": {k: v / GiB for k, v, _ in self.breakdown()}, "host_gib": self.host_bytes / GiB,
            "gradients_total_gib": self.gradients_total / GiB,
            "workload": {"batch": self.workload.batch, "src_len": self.workload.src_len, "tgt_len": self.workload.tgt_len,
                         "accumulation": self.workload.accumulation},
            "levers": {k: getattr(self.levers, k) for k in ("precision", "optimizer", "gradient_checkpointing", "lora", "ranks", "cpu_offload")},
        }


def _optimizer_bytes(spec: ModelSpec, lv: Levers, trainable: int) -> tuple[float, float]:
    """(state bytes, scratch bytes of one step)."""
    if lv.optimizer == "adamw":
        # fused AdamW updates in place: no scratch
        return 8.0 * trainable, 0.0
    if lv.optimizer == "adamw8bit":
        return 2.0 * trainable * 1.01, 0.0  # + one fp32 absmax per 2,048-value block (~1%)
    # Adafactor (transformers): row + column second moments per matrix; a full-size update and
    # its square exist for the matrix being updated
    if lv.lora:
        state = 4.0 * trainable * 0.1  # adapters are thin: rows + cols ~ a tenth of their size
        return state, 4.0 * 2 * trainable / max(1, len(lv.lora_targets))
    mats = spec.matrices()
    state = 4.0 * sum(r + c for r, c in mats)
    state += 4.0 * max(0, spec.params() - sum(r * c for r, c in mats))  # 1-d params: full second moment
    if lv.freeze_embeddings:
        state -= 4.0 * (spec.vocab_size + spec.d_model)
    return state, 4.0 * 2 * spec.largest_param()


@dataclass
class _Acts:
    """Bytes autograd saves for one micro-batch, by where backward frees them."""

    enc_layer: float  # one encoder layer (all its saved tensors, weight casts included)
    dec_layer: float  # one decoder layer, cross-attention keys/values over the source included
    enc_input: float  # checkpointing: the fp32 input kept per encoder layer
    dec_input: float
    other: float  # embeddings, encoder output, attention masks
    head_saved: float  # lm_head input, log-softmax output, logits held by the loop
    head_forward: float  # fp32 logits + log-softmax at the end of the forward
    head_transient: float  # the logits' gradients at the start of backward
    layer_transient: float  # gradient buffers inside one layer's backward
    casts_cached: float  # low-precision weight copies the autocast cache holds until the forward ends
    notes: list[str]


def _activations(spec: ModelSpec, lv: Levers, w: Workload, kind: str) -> _Acts:
    """What one micro-batch keeps for backward, op by op through a BART layer (see module docstring)."""
    notes: list[str] = []
    d, V, f_enc, f_dec = spec.d_model, spec.vocab_size, spec.encoder_ffn, spec.decoder_ffn
    lp = 2 if lv.amp else 4
    S, T, B = w.src_tokens, w.tgt_tokens, w.batch
    # dropout keeps a bool mask on CUDA; the CPU kernel keeps a full noise tensor of the input dtype
    m_lp = (1 if kind == "cuda" else lp) if spec.dropout > 0 else 0
    m32 = (1 if kind == "cuda" else 4) if spec.dropout > 0 else 0
    lora = set(lv.lora_targets) if lv.lora else set()

    def attention_core(h: int, l_kv: int) -> float:
        """Per query token: what the attention kernel keeps beyond q/k/v."""
        materialized = lv.attn == "eager" or (kind == "cpu" and spec.attention_dropout > 0)
        if not materialized:
            # output + log-sum-exp. On CPU the output is copied again by reshape(...).contiguous()
            # for out_proj; the CUDA flash/mem-efficient kernels write it in (B, L, H, D) order, so
            # out_proj reads the same storage
            return d * lp + 4 * h + (d * lp if kind == "cpu" else 0)
        if lv.attn == "eager":
            probs = h * l_kv * (4 + lp)  # fp32 softmax, low-precision copy for the value matmul
            if spec.attention_dropout > 0:
                probs += h * l_kv * ((1 if kind == "cuda" else 4) + lp)
            return probs + 2 * d * lp
        # CPU math kernel: fp32 copies of q/k/v and the fp32 probabilities (+ dropout noise and output)
        notes.append("CPU sdpa with attention dropout uses the math kernel (attention matrix materialized)")
        return 3 * d * 4 + h * l_kv * 4 * 3 + d * 4 + d * lp

    def attn_block(h: int, l_kv: int, self_attn: bool) -> float:
        n_in = 3 if self_attn else 1  # projections reading the query-side input
        if lv.amp:
            inputs = n_in * d * lp  # each linear keeps its own low-precision cast of the fp32 input
        else:
            inputs = d * 4  # one shared input
        projections = (3 if self_attn else 1) * d * lp
        extra = 0.0
        for p in (("q_proj", "k_proj", "v_proj") if self_attn else ("q_proj",)) + ("out_proj",):
            if p in lora:  # LoRA: dropout noise on the adapter input + the adapter's own input copy
                extra += d * m32 + (d * lp if not lv.amp and p != "out_proj" else 0)
        # + dropout mask of the block output + fp32 LayerNorm input (+ its mean/rstd)
        return inputs + projections + attention_core(h, l_kv) + d * m_lp + d * 4 + 8 + extra

    def ffn_block(f: int) -> float:
        act_mask = f * m_lp if spec.activation_dropout > 0 else 0
        extra = (d * m32 if "fc1" in lora else 0) + (f * m32 if "fc2" in lora else 0)
        # fc1 input, GELU input, fc2 input, dropout mask, fp32 LayerNorm input
        return d * lp + 2 * f * lp + act_mask + d * m_lp + d * 4 + 8 + extra

    def kv_per_source_token() -> float:
        """Cross-attention keys/values of one source token in one decoder layer."""
        inputs = 2 * d * lp if lv.amp else 0.0  # fp32: the encoder output is shared, counted once
        extra = sum(d * m32 for p in ("k_proj", "v_proj") if p in lora)
        return inputs + 2 * d * lp + extra

    def mask_bias(q_len: int, kv_len: int) -> float:
        """CUDA mem-efficient sdpa turns the bool padding mask into a bias of the query dtype (last
        dim padded to 16) in every layer, and keeps it for backward."""
        if kind != "cuda" or B <= 1 or lv.attn == "eager":
            return 0.0
        return B * q_len * (math.ceil(kv_len / 16) * 16) * lp

    enc_cast = (4 * d * d + 2 * d * f_enc) * lp if lv.amp else 0.0
    dec_cast = (8 * d * d + 2 * d * f_dec) * lp if lv.amp else 0.0
    enc_layer = S * (attn_block(spec.encoder_heads, w.src_len, True) + ffn_block(f_enc)) + mask_bias(w.src_len, w.src_len)
    dec_layer = (T * (attn_block(spec.decoder_heads, w.tgt_len, True) + attn_block(spec.decoder_heads, w.src_len, False)
                      + ffn_block(f_dec)) + S * kv_per_source_token() + mask_bias(w.tgt_len, w.src_len))
    embed = (S + T) * (d * 4 + 8 + d * m32)  # layernorm_embedding input + embedding dropout
    if kind == "cuda":
        masks = B * (w.src_len**2 + w.src_len * w.tgt_len)  # bool padding masks, made once per forward
    else:
        masks = B * 4 * (w.src_len**2 + w.tgt_len**2 + w.src_len * w.tgt_len)  # 4-D fp32 masks (CPU)
    enc_out = S * d * 4  # encoder output: input of every cross-attention (and checkpoint)
    # lm_head input; log-softmax output (fp32: autocast runs the loss in fp32, and the fp32
    # final_logits_bias promotes the logits to fp32); logits kept alive by the loop
    head_saved = T * (d * lp + 4 * V + (4 * V if lv.hold_logits else 0))
    head_forward = T * (d * lp + 8 * V)  # fp32 logits + log-softmax side by side
    head_transient = T * 8 * V  # grad of the log-softmax output (from nll) + grad of its input
    if lv.loss_chunk_tokens and lv.ranks == 1 and not lv.cpu_offload and T > 0:
        # chunked loss: the gradients w.r.t. the head's input (fp32) and weight (fp32, when trained)
        # are computed during the forward and kept until backward; one chunk's logits, log-softmax
        # and low-precision matmul output exist at a time; backward only scales what was kept
        chunk = min(float(lv.loss_chunk_tokens), T)
        trained_head = not (lv.lora or lv.freeze_embeddings)
        head_saved = T * d * 4 + ((V * d + V) * 4 if trained_head else 0)
        head_forward = head_saved + chunk * V * (8 + lp)
        head_transient = 0.0
    layer_transient = max(S * f_enc, T * f_dec) * 2 * lp  # grad of fc1 output + grad of GELU input
    head_cast = V * d * lp if lv.amp else 0.0  # lm_head (tied embedding) low-precision copy
    cached = lv.amp and not lv.lora  # the autocast cache only keeps casts of trainable leaf weights
    casts_all = spec.encoder_layers * enc_cast + spec.decoder_layers * dec_cast + head_cast
    return _Acts(
        enc_layer=enc_layer + enc_cast, dec_layer=dec_layer + dec_cast,
        enc_input=S * d * 4, dec_input=T * d * 4,
        other=embed + masks + enc_out, head_saved=head_saved + head_cast, head_forward=head_forward + head_cast,
        head_transient=head_transient, layer_transient=layer_transient,
        casts_cached=casts_all if cached else 0.0, notes=notes,
    )


def estimate(spec: ModelSpec, lv: Levers, w: Workload, device: Device) -> MemoryPlan:
    """The memory of one training step with these levers on this device (per rank).

    Three moments compete for the peak: the end of the forward, every point of the backward
    (activations are freed layer by layer while gradients are allocated layer by layer; with
    accumulation all gradients already exist), and the optimizer step.

    Args:
        spec: the architecture (:func:`model_spec`).
        lv: the levers; with ``ranks > 1`` or ``cpu_offload`` the FSDP FULL_SHARD layout is assumed
            (1/N of weights, gradients and optimizer state per rank plus two gathered layers).
        w: the largest micro-batch, shape (batch, src_len + tgt_len) in tokens.
        device: where the step runs; 'cuda' adds the CUDA context (``CUDA_CONTEXT_BYTES``, assumed),
            fragmentation (``CUDA_FRAGMENTATION``, assumed) and ``CUDA_ACTIVATION_FACTOR`` (derived
            from one H200 anchor); 'cpu' adds ``CPU_OVERHEAD_PER_PARAM`` (calibrated by
            ``bench/calibrate_memory.py``, points in ``bench/results_plan.md``).

    Returns:
        The :class:`MemoryPlan` of the largest moment, sizes in bytes.
    """
    kind = device.kind
    P = spec.params()
    if lv.lora:
        trainable = spec.lora_params(lv.lora_r, list(lv.lora_targets))
    else:
        trainable = P - (spec.embedding_params() if lv.freeze_embeddings else 0)
    n = max(1, lv.ranks)
    weights = 4.0 * P + 4.0 * spec.vocab_size  # + final_logits_bias buffer
    if lv.lora:
        weights += 4.0 * trainable
    grads_total = 4.0 * trainable
    opt_state, opt_scratch = _optimizer_bytes(spec, lv, trainable)
    a = _activations(spec, lv, w, kind)
    notes = list(a.notes)
    factor = CUDA_ACTIVATION_FACTOR if kind == "cuda" else 1.0
    host = 0.0
    grad_scale = 1.0  # share of each gradient this rank keeps
    if n > 1 or lv.cpu_offload:
        # FSDP FULL_SHARD: each rank keeps 1/N of weights, grads and states, and gathers one layer
        # (plus the next, prefetched) in full while it runs
        layer = 4.0 * max(spec.encoder_layer_params(), spec.decoder_layer_params())
        gathered = 2 * layer + 4.0 * spec.embedding_params() / n
        if lv.cpu_offload:
            host = (weights + grads_total + opt_state) / n
            weights, opt_state, grad_scale = gathered, 0.0, 0.0
            notes.append(f"CPU offload keeps {host / GiB:.1f} GiB per rank in host RAM")
            grads_total_dev = layer
        else:
            weights, opt_state, grad_scale = weights / n + gathered, opt_state / n, 1.0 / n
            grads_total_dev = grads_total / n + layer
    else:
        grads_total_dev = grads_total
    static = weights + opt_state

    # gradients allocated as backward walks the model (full fine-tune; LoRA: adapters, tiny)
    if lv.lora:
        g_head = g_dec = g_enc = 0.0
        g_early = grads_total_dev
    else:
        g_head = 0.0 if lv.freeze_embeddings else 4.0 * spec.embedding_params() * grad_scale
        g_dec = 4.0 * spec.decoder_layer_params() * grad_scale
        g_enc = 4.0 * spec.encoder_layer_params() * grad_scale
        g_early = 0.0
    persist = grads_total_dev if w.accumulation > 1 else 0.0

    Le, Ld = spec.encoder_layers, spec.decoder_layers
    ckpt = lv.gradient_checkpointing
    saved_enc = a.enc_input if ckpt else a.enc_layer
    saved_dec = a.dec_input if ckpt else a.dec_layer
    acts_total = Le * saved_enc + Ld * saved_dec + a.other + a.head_saved

    phases: list[tuple[str, float, float, float, float]] = []  # (name, grads live, acts live, temporary)

    def add(name: str, grads: float, acts: float, temp: float) -> None:
        phases.append((name, grads, acts * factor, temp * factor))

    # end of the forward: the log-softmax is being computed; autocast still caches every weight copy
    fwd_acts = acts_total - a.head_saved + a.head_forward + (a.casts_cached if ckpt else 0.0)
    add("end of forward", max(persist, g_early), fwd_acts, 0.0)
    # backward, node by node
    grads = max(persist, g_early)
    acts = acts_total
    if kind == "cpu":
        # RSS is sticky: glibc keeps the pages of freed chunks below its mmap threshold in its
        # arenas, so the logits' gradients, the first recomputed layer and the tied-embedding
        # gradient add up instead of reusing each other's memory (this is how the CPU points were
        # calibrated; a CUDA allocator reuses the blocks)
        first = max(a.dec_layer, a.enc_layer) if ckpt else 0.0
        add("start of backward", grads + g_head, acts + first, a.head_transient)
    else:
        add("start of backward", grads, acts, a.head_transient)
    acts -= a.head_saved
    grads = max(persist, grads + g_head)
    for saved, layer_full, g in [(saved_dec, a.dec_layer, g_dec)] * Ld + [(saved_enc, a.enc_layer, g_enc)] * Le:
        recompute = layer_full if ckpt else 0.0  # checkpointing re-runs the layer's forward here
        add("backward", grads, acts + recompute, a.layer_transient)
        acts -= saved
        grads = max(persist, grads + g)
    add("end of backward", max(persist, grads_total_dev), acts, 0.0)
    add("optimizer step", grads_total_dev, 0.0, opt_scratch / factor)

    name, g_live, acts_live, temp = max(phases, key=lambda p: p[1] + p[2] + p[3])
    if name == "optimizer step":
        notes.append("the optimizer step (not the forward/backward) sets the peak")
    allocated = static + g_live + acts_live + temp
    if kind == "cuda":
        overhead = float(CUDA_CONTEXT_BYTES)
        fragmentation = CUDA_FRAGMENTATION * (acts_live + temp)
    else:
        overhead, fragmentation = CPU_OVERHEAD_PER_PARAM * P, 0.0
    return MemoryPlan(
        device=device, model=spec, levers=lv, workload=w, params=P, trainable_params=trainable,
        weights=weights, gradients=g_live, optimizer=opt_state, activations=acts_live, temporary=temp,
        overhead=overhead, peak=allocated + fragmentation + overhead, fragmentation=fragmentation,
        gradients_total=grads_total, phase=name, host_bytes=host, notes=sorted(set(notes)),
    )


def plan_memory(
    cfg: Config,
    device: str | Device = "auto",
    *,
    ranks: int = 1,
    cpu_offload: bool = False,
    max_tokens: Optional[int] = None,
    workload: Optional[Workload] = None,
) -> MemoryPlan:
    """Predict the peak memory of cfg's training step on ``device`` (per rank with FSDP over ``ranks``).

    Args:
        cfg: model, levers and token budgets are read from it.
        device: a :class:`Device` or a name for :func:`resolve_device` ('H100', 'cpu:24', 'auto').
        ranks: FSDP processes sharing the model (1: single process).
        cpu_offload: FSDP keeps parameters and optimizer state in host RAM.
        max_tokens: micro-batch budget in tokens; None: ``train.max_tokens``.
        workload: an explicit micro-batch shape; overrides ``max_tokens``.

    Returns:
        The :class:`MemoryPlan`; sizes in bytes (``peak`` vs. ``capacity``; ``to_dict`` gives GiB).
        Calibration: within 15% of every point in ``bench/results_plan.md``
        (``tests/unit/test_plan_memory.py``).

    Raises:
        PlanError: an unknown device name or a model architecture the planner cannot read.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    spec = model_spec(cfg)
    lv = levers_from_config(cfg, dev, ranks=ranks, cpu_offload=cpu_offload)
    w = workload or workload_from_config(cfg, max_tokens)
    return estimate(spec, lv, w, dev)


# ------------------------------------------------------------------------------- options
@dataclass
class FitOption:
    """One way to run cfg on a device: config overrides, the largest budget that fits, its speed."""

    label: str
    overrides: list[str]
    max_tokens: int
    plan: MemoryPlan
    speed: float  # relative throughput vs. the configuration as written (1.0)
    changes_model: bool = False  # LoRA trains a different set of weights: listed, never auto-picked
    note: str = ""


def _micro_batch_efficiency(tokens: int, kind: str) -> float:
    # small micro-batches leave the device idle between kernels; half speed at this many tokens
    half = 1024 if kind == "cuda" else 32
    return tokens / (tokens + half)


def _largest_budget(cfg: Config, spec: ModelSpec, lv: Levers, dev: Device) -> Optional[tuple[int, MemoryPlan]]:
    """Largest max_tokens (multiple of 256, at most train.batch_tokens) whose plan fits, or None."""
    one = workload_from_config(cfg, 0)
    lo_tokens = one.src_len + one.tgt_len  # a micro-batch holds at least one whole thread
    hi_tokens = max(cfg.train.batch_tokens, lo_tokens)
    first = estimate(spec, lv, workload_from_config(cfg, lo_tokens), dev)
    if not first.fits:
        return None
    best_tokens, best_plan = lo_tokens, first
    step = 256
    lo, hi = lo_tokens // step, hi_tokens // step
    while lo < hi:  # peak grows with the budget: binary search
        mid = (lo + hi + 1) // 2
        p = estimate(spec, lv, workload_from_config(cfg, mid * step), dev)
        if p.fits:
            lo, best_tokens, best_plan = mid, mid * step, p
        else:
            hi = mid - 1
    return best_tokens, best_plan


def fit_options(cfg: Config, device: str | Device = "auto", *, ranks: int = 1) -> list[FitOption]:
    """Every lever combination that fits, with its largest budget, fastest first.

    Tried: the config's precision (plus bf16/fp16 when it is fp32 and the device has fast low
    precision), gradient checkpointing, AdamW / 8-bit AdamW (CUDA only) / Adafactor, LoRA, and on
    CUDA FSDP CPU offload. For each, the largest ``train.max_tokens`` (a multiple of 256 tokens, at
    most ``train.batch_tokens``) whose plan fits is found by binary search.

    Returns:
        :class:`FitOption` rows; options that change what is trained (LoRA) come last, then by
        decreasing relative ``speed`` (the ``SPEED`` / ``LOWP_SPEEDUP`` factors times a
        micro-batch efficiency; ratios against the config as written, not measured per option).

    Raises:
        PlanError: an unknown device name or an unreadable model architecture.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    spec = model_spec(cfg)
    base = levers_from_config(cfg, dev, ranks=ranks)
    base_eff = _micro_batch_efficiency(cfg.train.max_tokens, dev.kind)
    precisions = [base.precision]
    if base.precision == "fp32" and (dev.kind == "cuda" or dev.bf16):
        precisions.append("bf16" if dev.bf16 else "fp16")
    optimizers = [base.optimizer] + [o for o in ("adamw8bit", "adafactor") if o != base.optimizer and (o != "adamw8bit" or dev.kind == "cuda")]
    options: list[FitOption] = []
    for prec in precisions:
        for ckpt in sorted({base.gradient_checkpointing, True}):
            for opt in optimizers:
                for lora in sorted({base.lora, True}):
                    for offload in ([False, True] if dev.kind == "cuda" else [False]):
                        lv = replace(base, precision=prec, gradient_checkpointing=ckpt, optimizer=opt, lora=lora, cpu_offload=offload)
                        found = _largest_budget(cfg, spec, lv, dev)
                        if found is None:
                            continue
                        tokens, plan = found
                        speed = _micro_batch_efficiency(tokens, dev.kind) / base_eff
                        overrides, parts = [], []
                        if prec != base.precision:
                            speed *= LOWP_SPEEDUP[dev.kind]
                            overrides.append(f"train.precision={prec}")
                            parts.append(f"{prec} autocast")
                        if ckpt and not base.gradient_checkpointing:
                            speed *= SPEED["gradient_checkpointing"]
                            overrides.append("model.gradient_checkpointing=true")
                            parts.append("checkpointing")
                        if opt != base.optimizer:
                            speed *= SPEED[opt] if opt in SPEED else 1.0
                            overrides.append(f"train.optimizer={opt}")
                            parts.append(opt)
                        if lora and not base.lora:
                            speed *= SPEED["lora"]
                            overrides.append("model.lora.enabled=true")
                            parts.append("LoRA")
                        if offload:
                            speed *= SPEED["cpu_offload"]
                            parts.append("FSDP CPU offload")
                        if tokens != cfg.train.max_tokens:
                            overrides.append(f"train.max_tokens={tokens}")
                        parts.append(f"max_tokens={tokens}")
                        options.append(FitOption(
                            label=", ".join(parts), overrides=overrides, max_tokens=tokens, plan=plan, speed=speed,
                            changes_model=lora and not base.lora,
                            note="needs train.strategy=fsdp with cpu offload" if offload else "",
                        ))
    # drop options dominated by a simpler one (same speed or slower, more levers)
    options.sort(key=lambda o: (o.changes_model, -o.speed, len(o.overrides)))
    return options


def auto_fit(cfg: Config, device: str | Device = "auto", *, ranks: int = 1) -> tuple[list[str], MemoryPlan]:
    """Levers and the largest micro-batch budget that fit ``device`` with headroom.

    The effective batch stays: ``train.batch_tokens`` is unchanged and the loop accumulates
    ceil(batch_tokens / max_tokens) micro-batches. Options that change what is trained (LoRA) are
    only taken when the config already uses them; offload needs a launcher flag and is not picked.

    Returns:
        ``(overrides, plan)``: ``section.key=value`` texts of the fastest fitting option of
        :func:`fit_options` and its :class:`MemoryPlan` (bytes).

    Raises:
        PlanError: nothing fits even with one thread per micro-batch (the message lists the ways
            out: a larger device, LoRA, FSDP, shorter sources), or the device/model is unknown.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    options = [o for o in fit_options(cfg, dev, ranks=ranks) if not o.changes_model and "offload" not in o.label]
    if not options:
        spec = model_spec(cfg)
        raise PlanError(
            f"{spec.name} does not fit {dev.name} ({dev.memory_gib:.0f} GiB) even with one thread per micro-batch, "
            f"checkpointing and the smallest optimizer state. Use a larger device (see `threadsum plan --cost`), "
            f"LoRA (model.lora.enabled=true), FSDP over several GPUs, or shorter data.max_source_tokens."
        )
    best = options[0]
    return best.overrides, best.plan


def apply_auto_fit(cfg: Config, device: str | Device = "auto") -> tuple[Config, list[str], MemoryPlan]:
    """cfg with auto_fit's overrides applied (for `threadsum train --auto-fit`).

    Returns:
        ``(new_cfg, overrides, plan)``; ``cfg`` itself is not changed.

    Raises:
        PlanError: as :func:`auto_fit`.
        ConfigError: the overridden config does not validate (not expected: the overrides are
            values the config accepts).
    """
    from threadsum.config import apply_overrides, config_from_dict

    overrides, plan = auto_fit(cfg, device)
    new = config_from_dict(apply_overrides(cfg.to_dict(), overrides), origin="auto-fit")
    return new, overrides, plan
