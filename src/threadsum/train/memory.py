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

from threadsum import family as family_mod
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
SEQ2SEQ, CAUSAL = family_mod.SEQ2SEQ.name, family_mod.CAUSAL.name
"""The two model families (``ModelSpec.family``, :mod:`threadsum.family`): an encoder-decoder, or a
decoder-only causal LM."""


@dataclass(frozen=True)
class ModelSpec:
    """The architecture numbers that decide memory and compute, for either model family.

    ``family`` 'seq2seq': a BART-style encoder-decoder (learned positions, lm_head tied to the shared
    embedding, a ``final_logits_bias`` buffer). 'causal': a decoder-only Llama/Qwen-style LM whose one
    stack of layers is described by the ``decoder_*`` fields (``decoder_heads`` query heads,
    ``kv_heads`` key/value heads, ``head_dim``, SwiGLU width ``decoder_ffn``); its ``encoder_*``
    fields are 0. Every formula that differs between the families lives in that family's
    :class:`Seq2SeqFormulas` / :class:`CausalFormulas`; :attr:`formulas` is the one place that picks it.
    """

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
    family: str = SEQ2SEQ
    kv_heads: int = 0  # causal: key/value heads (grouped-query attention); 0 = decoder_heads
    head_dim: int = 0  # causal: width of one head; 0 = d_model // decoder_heads
    tied_embeddings: bool = True  # lm_head shares the token embedding
    qkv_bias: bool = False  # causal: q/k/v projections carry a bias (Qwen2)
    qk_norm: bool = False  # causal: RMSNorm over each head's queries and keys (Qwen3)

    @property
    def formulas(self) -> "Seq2SeqFormulas | CausalFormulas":
        """The family's formulas (:data:`FAMILY_FORMULAS`): the one dispatch point on ``family``."""
        try:
            return FAMILY_FORMULAS[self.family]
        except KeyError:
            raise PlanError(f"unknown model family '{self.family}'; use one of {', '.join(FAMILY_FORMULAS)}") from None

    @property
    def kv_heads_(self) -> int:
        """Key/value heads (``kv_heads``, or every query head when 0)."""
        return self.kv_heads or self.decoder_heads

    @property
    def head_dim_(self) -> int:
        """Width of one attention head in elements (``head_dim``, or d_model / heads when 0)."""
        return self.head_dim or self.d_model // max(1, self.decoder_heads)

    @classmethod
    def from_hf_config(cls, name: str, c: dict[str, Any], family: Optional[str] = None) -> "ModelSpec":
        """Read a Hugging Face ``config.json`` mapping of either family.

        Args:
            name: what the spec is called in messages and tables.
            c: the config mapping: BART-style (``d_model``, ``encoder_layers``, ``encoder_ffn_dim``, ...)
                or Llama/Qwen-style (``hidden_size``, ``num_hidden_layers``, ``intermediate_size``, ...).
            family: 'seq2seq' or 'causal'; None: :func:`family_of_config`.

        Raises:
            PlanError: a required key is missing (the message names the keys the family needs).
        """
        fam = family or family_of_config(c)
        return replace(FAMILY_FORMULAS[fam].spec_from_config(name, c), family=fam)

    # every count below is the family's (see :class:`Seq2SeqFormulas` / :class:`CausalFormulas`)
    def params(self) -> int:
        """All parameters of the model (tied embeddings counted once; buffers are not parameters)."""
        return self.formulas.params(self)

    def embedding_params(self) -> int:
        """Parameters of the input token embedding (vocab x d_model): what ``model.freeze_embeddings`` freezes."""
        return self.vocab_size * self.d_model

    def linear_weights(self) -> int:
        """Elements of every matmul weight (autocast casts each one to bf16/fp16 and saves the copy)."""
        return self.formulas.linear_weights(self)

    def largest_param(self) -> int:
        """Elements of the largest single parameter: sizes Adafactor's full-size update scratch."""
        return self.formulas.largest_param(self)

    def matrices(self) -> list[tuple[int, int]]:
        """(rows, cols) of each 2-D parameter, for Adafactor's factored state."""
        return self.formulas.matrices(self)

    def lora_params(self, r: int, targets: list[str]) -> int:
        """Trainable parameters of LoRA adapters of rank ``r`` on the named modules (``r * (in + out)``
        per adapted ``Linear(in, out)``: peft's A and B, no bias); unknown target names add nothing."""
        return self.formulas.lora_params(self, r, targets)

    def stacks(self) -> list[tuple[int, int]]:
        """``(layers, parameters per layer)`` of each stack in the order backward visits them
        (seq2seq: decoder then encoder; causal: its one stack)."""
        return self.formulas.stacks(self)


def family_of_config(c: dict[str, Any]) -> str:
    """'seq2seq' or 'causal' for a ``config.json`` mapping (:func:`threadsum.family.family_of`)."""
    return family_mod.family_of(c).name


def _with_family(spec: ModelSpec, requested: str) -> ModelSpec:
    if requested not in ("auto", spec.family):
        raise PlanError(f"model.family={requested}, but the architecture of '{spec.name}' is {spec.family}: "
                        f"set model.family=auto (or {spec.family})")
    return spec


def model_spec(cfg: Config) -> ModelSpec:
    """The architecture of cfg's model: the tiny section, a local config.json, or a known hub id.

    No network access and no model is built: ``model.init='random'`` reads ``model.tiny`` (family from
    ``model.tiny.architecture``: bart -> seq2seq, llama/qwen2 -> causal); otherwise
    ``model.name_or_path`` is a local folder with ``config.json`` or a key/alias of
    :func:`known_models` (family from :func:`family_of_config`). ``model.family`` other than 'auto'
    must agree with what the architecture is.

    Raises:
        PlanError: the name is neither a local model folder nor a known hub id, its config lacks the
            family's keys, or ``model.family`` contradicts the architecture.
        json.JSONDecodeError: a local ``config.json`` is not valid JSON.
    """
    m = cfg.model
    if m.init == "random":
        family = m.family if m.family != "auto" else (
            CAUSAL if m.tiny.architecture in family_mod.CAUSAL_ARCHITECTURES else SEQ2SEQ)
        return FAMILY_FORMULAS[family].spec_from_tiny(m.tiny)
    name = m.name_or_path or ""
    local = Path(name).expanduser()
    if (local / "config.json").is_file():
        return _with_family(ModelSpec.from_hf_config(name, json.loads((local / "config.json").read_text())), m.family)
    models = known_models()
    key = models.get("aliases", {}).get(name, name)
    if key in models and key != "aliases":
        return _with_family(ModelSpec.from_hf_config(name, models[key]), m.family)
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
    lora_targets: tuple[str, ...] = ()  # empty: the model family's default targets
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


def levers_from_config(cfg: Config, device: Device, ranks: int = 1, cpu_offload: bool = False,
                       spec: Optional[ModelSpec] = None) -> Levers:
    """The levers cfg sets for ``device``: 'auto' precision resolved (:func:`resolve_precision`).

    Args:
        ranks: processes sharing the model with FSDP (1: single process).
        cpu_offload: FSDP keeps parameters and optimizer state in host RAM.
        spec: the model (None: :func:`model_spec`); an empty ``model.lora.target_modules`` means
            its family's default LoRA targets.

    The chunked loss follows the training loop's own rule (``train.loss.chunk_tokens_for``): the
    configured chunk in one process, the full logits under DDP/FSDP (several processes; CPU offload
    runs under the FSDP plugin, which several processes build).
    """
    from threadsum.train.loss import chunk_tokens_for  # needs torch: planning needs the [train] extra

    m, t = cfg.model, cfg.train
    spec = spec or model_spec(cfg)
    return Levers(
        precision=resolve_precision(t.precision, device),
        optimizer=t.optimizer,
        gradient_checkpointing=m.gradient_checkpointing,
        lora=m.lora.enabled,
        lora_r=m.lora.r,
        lora_targets=tuple(m.lora.target_modules) or spec.formulas.lora_targets,
        freeze_embeddings=m.freeze_embeddings,
        attn=m.attn_implementation or "sdpa",
        ranks=ranks,
        cpu_offload=cpu_offload,
        loss_chunk_tokens=chunk_tokens_for(t.loss_chunk_tokens, distributed=ranks > 1 or cpu_offload),
    )


@dataclass(frozen=True)
class Workload:
    """Shape of the largest micro-batch, in tokens.

    Seq2seq (``seq_len`` 0): ``batch`` threads of a ``src_len`` source and a ``tgt_len`` target, each
    padded on its own. Causal (``seq_len`` > 0): ``batch`` sequences of prompt (``src_len``) +
    completion (``tgt_len``) padded together to ``seq_len``; ``labelled_len`` positions per sequence
    meet the loss (0: ``tgt_len``).

    ``accumulation`` > 1 means the gradients of earlier micro-batches of the same optimizer step
    stay allocated while this one runs forward and backward.
    """

    batch: float
    src_len: int
    tgt_len: int
    accumulation: int = 1
    seq_len: int = 0
    labelled_len: int = 0

    @property
    def src_tokens(self) -> float:
        """Source (prompt) tokens of the micro-batch (batch x src_len)."""
        return self.batch * self.src_len

    @property
    def tgt_tokens(self) -> float:
        """Target (completion) tokens of the micro-batch (batch x tgt_len)."""
        return self.batch * self.tgt_len

    @property
    def tokens(self) -> float:
        """All padded tokens of the micro-batch: batch x (src_len + tgt_len), or batch x seq_len for
        one joint sequence (causal)."""
        return self.batch * self.seq_len if self.seq_len else self.src_tokens + self.tgt_tokens

    @property
    def labelled_tokens(self) -> float:
        """Tokens that meet the loss: batch x (labelled_len, or tgt_len when 0)."""
        return self.batch * (self.labelled_len or self.tgt_len)


def workload_from_config(cfg: Config, max_tokens: Optional[int] = None, spec: Optional[ModelSpec] = None) -> Workload:
    """Worst case of the token-budget sampler: every thread at the longest source and summary.

    A micro-batch holds at least one thread even when the budget is smaller than one thread.
    Accumulation follows the training loop: ceil(train.batch_tokens / max_tokens) micro-batches
    per optimizer step.

    Args:
        cfg: lengths come from ``data.max_source_tokens`` / ``data.max_target_tokens`` padded the
            family's way (``lengths`` of :class:`Seq2SeqFormulas` / :class:`CausalFormulas`: two
            sequences, or one of pad(src + tgt)); threads per micro-batch are capped by ``train.max_batch_size``.
        max_tokens: micro-batch budget in padded tokens; None: ``train.max_tokens``.
        spec: the model (None: :func:`model_spec`).
    """
    spec = spec or model_spec(cfg)
    src, tgt, seq, labelled = spec.formulas.lengths(cfg)
    budget = max_tokens if max_tokens is not None else cfg.train.max_tokens
    batch = min(max(1, budget // (seq or src + tgt)), cfg.train.max_batch_size)
    accumulation = max(1, math.ceil(cfg.train.batch_tokens / max(1, budget)))
    return Workload(batch=batch, src_len=src, tgt_len=tgt, accumulation=accumulation, seq_len=seq, labelled_len=labelled)


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
             (f"{w.batch:g} x {w.seq_len} tokens (prompt {w.src_len} + completion {w.tgt_len}, one sequence)" if w.seq_len
              else f"{w.batch:g} x ({w.src_len}+{w.tgt_len}) tokens") + f", {lv.precision}"
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

    layers: list[tuple[float, float]]  # per stack, as ModelSpec.stacks(): (one layer's saved bytes, its checkpointed input)
    other: float  # embeddings, encoder output, attention masks, final norm
    head_saved: float  # lm_head input, log-softmax output, logits held by the loop
    head_forward: float  # fp32 logits + log-softmax at the end of the forward
    head_transient: float  # the logits' gradients at the start of backward
    layer_transient: float  # gradient buffers inside one layer's backward
    casts_cached: float  # low-precision weight copies the autocast cache holds until the forward ends
    notes: list[str]


def _head_terms(spec: ModelSpec, lv: Levers, rows: float, labelled: float, logit_bytes: int,
                selected: bool) -> tuple[float, float, float]:
    """``(saved, at the end of the forward, at the start of backward)`` bytes of the LM head and its loss.

    Full-logits path: the head runs over ``rows`` positions; the logits (``logit_bytes`` per value)
    are copied to fp32 for the loss, whose fp32 log-softmax is kept; backward starts with two fp32
    gradients of that size. Chunked path (``Levers.loss_chunk_tokens`` > 0, train/loss.py): only
    the ``labelled`` rows meet the head, one chunk of logits at a time; the fp32 gradients of the
    head input (and of the head weight when it is trained) are computed in the forward and kept.
    ``selected``: the labelled rows are first gathered out of the hidden states (a copy, and a
    zero-filled gradient of all ``rows`` at the start of backward).
    """
    d, V = spec.d_model, spec.vocab_size
    lp = 2 if lv.amp else 4
    if lv.loss_chunk_tokens and labelled > 0:
        chunk = min(float(lv.loss_chunk_tokens), labelled)
        trained_head = not (lv.lora or (lv.freeze_embeddings and spec.tied_embeddings))
        saved = labelled * d * 4 * (2 if selected else 1) + ((V * d + V) * 4 if trained_head else 0)
        # per chunk: its logits (matmul output, fp32 copy, log-softmax) and, for a trained head, the
        # chunk's weight gradient (vocab x d fp32) before it is added to the running sum
        forward = saved + chunk * V * (8 + (lp if lp < 4 else 0)) + (V * d * 4 if trained_head else 0)
        return saved, forward, rows * d * 4 if selected else 0.0
    to_fp32 = 4 if logit_bytes < 4 else 0  # low-precision logits are copied to fp32 for the loss
    saved = rows * (d * lp + 4 * V + (logit_bytes * V if lv.hold_logits else 0))
    return saved, rows * (d * lp + (logit_bytes + to_fp32 + 4) * V), rows * 8 * V


# ---------------------------------------------------------------------- seq2seq formulas
class Seq2SeqFormulas:
    """Formulas of a BART-style encoder-decoder (``FAMILY_FORMULAS['seq2seq']``):
    BartForConditionalGeneration, learned positions, lm_head tied to the shared embedding."""

    lora_targets = family_mod.SEQ2SEQ.lora_targets
    """LoRA targets when ``model.lora.target_modules`` is empty: attention projections and the FFN."""
    def cpu_sticky_layers(self, checkpointing: bool) -> int:
        """CPU: layers' worth of activation memory resident beside all saved activations at the start
        of backward (sticky RSS): the first recomputed layer with checkpointing, none without (calibrated)."""
        return 1 if checkpointing else 0

    def spec_from_config(self, name: str, c: dict[str, Any]) -> ModelSpec:
        """A spec from a BART-style ``config.json`` mapping; missing optional keys take BART's
        defaults (1,024 positions, dropout 0.1). Raises PlanError when a required key is missing."""
        try:
            return ModelSpec(
                name=name, d_model=int(c["d_model"]),
                encoder_layers=int(c["encoder_layers"]), decoder_layers=int(c["decoder_layers"]),
                encoder_heads=int(c["encoder_attention_heads"]), decoder_heads=int(c["decoder_attention_heads"]),
                encoder_ffn=int(c["encoder_ffn_dim"]), decoder_ffn=int(c["decoder_ffn_dim"]),
                vocab_size=int(c["vocab_size"]), max_positions=int(c.get("max_position_embeddings", 1024)),
                dropout=float(c.get("dropout", 0.1)), attention_dropout=float(c.get("attention_dropout", 0.0)),
                activation_dropout=float(c.get("activation_dropout", 0.0)), family=SEQ2SEQ,
            )
        except KeyError as exc:
            raise PlanError(
                f"model config of '{name}' lacks {exc}; the planner understands BART-style encoder-decoder configs "
                f"(d_model, encoder_layers, encoder_ffn_dim, ...) and Llama/Qwen-style causal ones "
                f"(hidden_size, num_hidden_layers, intermediate_size, ...)"
            ) from None

    def spec_from_tiny(self, t: Any) -> ModelSpec:
        """A spec from ``model.tiny`` (random-init BART)."""
        return ModelSpec(
            name=f"random d{t.d_model} L{t.encoder_layers}+{t.decoder_layers}",
            d_model=t.d_model, encoder_layers=t.encoder_layers, decoder_layers=t.decoder_layers,
            encoder_heads=t.attention_heads, decoder_heads=t.attention_heads,
            encoder_ffn=t.ffn_dim, decoder_ffn=t.ffn_dim, vocab_size=t.vocab_size,
            max_positions=t.max_position_embeddings, dropout=t.dropout, family=SEQ2SEQ,
        )

    @staticmethod
    def _attn(s: ModelSpec) -> int:
        return 4 * (s.d_model**2 + s.d_model)

    @staticmethod
    def _ffn(s: ModelSpec, f: int) -> int:
        return 2 * s.d_model * f + f + s.d_model

    def encoder_layer_params(self, s: ModelSpec) -> int:
        """Parameters of one encoder layer: self-attention (4 d x d + bias), FFN, 2 LayerNorms."""
        return self._attn(s) + self._ffn(s, s.encoder_ffn) + 4 * s.d_model

    def decoder_layer_params(self, s: ModelSpec) -> int:
        """Parameters of one decoder layer: self- and cross-attention, FFN, 3 LayerNorms."""
        return 2 * self._attn(s) + self._ffn(s, s.decoder_ffn) + 6 * s.d_model

    def stacks(self, s: ModelSpec) -> list[tuple[int, int]]:
        """``(layers, params per layer)``: decoder then encoder (the order of backward)."""
        return [(s.decoder_layers, self.decoder_layer_params(s)), (s.encoder_layers, self.encoder_layer_params(s))]

    def params(self, s: ModelSpec) -> int:
        """All parameters of ``BartForConditionalGeneration``: embeddings, learned positions
        (``max_positions + 2`` rows each, BART's offset), layer-norms and every layer; the tied
        ``lm_head`` is counted once and the ``final_logits_bias`` buffer is not a parameter."""
        d = s.d_model
        positions = 2 * (s.max_positions + 2) * d
        return (s.embedding_params() + positions + 4 * d
                + s.encoder_layers * self.encoder_layer_params(s) + s.decoder_layers * self.decoder_layer_params(s))

    def buffer_bytes(self, s: ModelSpec) -> float:
        """Bytes of fp32 buffers beside the weights: ``final_logits_bias`` (vocab x 4 B)."""
        return 4.0 * s.vocab_size

    def linear_weights(self, s: ModelSpec) -> int:
        """Elements of every matmul weight (q/k/v/out, cross-attention, fc1/fc2, the tied head)."""
        d = s.d_model
        enc = 4 * d * d + 2 * d * s.encoder_ffn
        dec = 8 * d * d + 2 * d * s.decoder_ffn
        return s.encoder_layers * enc + s.decoder_layers * dec + s.vocab_size * d

    def largest_param(self, s: ModelSpec) -> int:
        """Elements of the embedding or the widest FFN matrix, whichever is larger."""
        return max(s.vocab_size * s.d_model, s.d_model * max(s.encoder_ffn, s.decoder_ffn))

    def matrices(self, s: ModelSpec) -> list[tuple[int, int]]:
        """(rows, cols) of each 2-D parameter: embedding, two position tables, every projection."""
        d = s.d_model
        out = [(s.vocab_size, d), (s.max_positions + 2, d), (s.max_positions + 2, d)]
        for _ in range(s.encoder_layers):
            out += [(d, d)] * 4 + [(s.encoder_ffn, d), (d, s.encoder_ffn)]
        for _ in range(s.decoder_layers):
            out += [(d, d)] * 8 + [(s.decoder_ffn, d), (d, s.decoder_ffn)]
        return out

    def lora_params(self, s: ModelSpec, r: int, targets: list[str]) -> int:
        """LoRA parameters; decoder layers have two attention blocks (self and cross)."""
        d, t = s.d_model, set(targets)
        attn = sum(r * 2 * d for m in ("q_proj", "k_proj", "v_proj", "out_proj") if m in t)

        def ffn(f: int) -> int:
            return (r * (d + f) if "fc1" in t else 0) + (r * (f + d) if "fc2" in t else 0)

        return s.encoder_layers * (attn + ffn(s.encoder_ffn)) + s.decoder_layers * (2 * attn + ffn(s.decoder_ffn))

    def lengths(self, cfg: Config) -> tuple[int, int, int, int]:
        """``(src_len, tgt_len, seq_len, labelled_len)`` of the longest thread: source and target are
        two sequences, each padded to ``train.pad_to_multiple_of`` (seq_len 0); targets are the labels."""
        mult = cfg.train.pad_to_multiple_of
        return (math.ceil(cfg.data.max_source_tokens / mult) * mult, math.ceil(cfg.data.max_target_tokens / mult) * mult, 0, 0)

    def kv_cache_elements(self, s: ModelSpec, prompt_len: int, new_tokens: int) -> float:
        """Cached values per generated sequence: decoder self-attention K/V over the new tokens plus
        cross-attention K/V over the source, in every decoder layer."""
        return s.decoder_layers * 2 * s.d_model * (prompt_len + new_tokens)

    def flops_per_token(self, s: ModelSpec, src_share: float, src_len: int, tgt_len: int) -> float:
        """Training FLOPs per real token: 6 x weights touched; source tokens pass the encoder, target
        tokens the decoder and the LM head; attention as 2 x 2 x context x d_model weights per layer
        (decoder context: target + source, for self- and cross-attention)."""
        d = s.d_model
        enc = s.encoder_layers * (4 * d * d + 2 * d * s.encoder_ffn)
        dec = s.decoder_layers * (8 * d * d + 2 * d * s.decoder_ffn) + s.vocab_size * d
        attn_src = s.encoder_layers * 2 * 2 * src_len * d
        attn_tgt = s.decoder_layers * 2 * 2 * (tgt_len + src_len) * d
        return 6 * (src_share * (enc + attn_src) + (1 - src_share) * (dec + attn_tgt))

    def activations(self, spec: ModelSpec, lv: Levers, w: Workload, kind: str) -> _Acts:
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
            # under autocast each linear keeps its own low-precision cast of the fp32 input; fp32: one shared input
            inputs = n_in * d * lp if lv.amp else d * 4
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
        # lm_head over the target positions; the fp32 final_logits_bias promotes the logits to fp32
        head_saved, head_forward, head_transient = _head_terms(spec, lv, T, T, 4, selected=False)
        layer_transient = max(S * f_enc, T * f_dec) * 2 * lp  # grad of fc1 output + grad of GELU input
        head_cast = V * d * lp if lv.amp else 0.0  # lm_head (tied embedding) low-precision copy
        cached = lv.amp and not lv.lora  # the autocast cache only keeps casts of trainable leaf weights
        casts_all = spec.encoder_layers * enc_cast + spec.decoder_layers * dec_cast + head_cast
        return _Acts(
            layers=[(dec_layer + dec_cast, T * d * 4), (enc_layer + enc_cast, S * d * 4)],
            other=embed + masks + enc_out, head_saved=head_saved + head_cast, head_forward=head_forward + head_cast,
            head_transient=head_transient, layer_transient=layer_transient,
            casts_cached=casts_all if cached else 0.0, notes=notes,
        )


# ----------------------------------------------------------------------- causal formulas
class CausalFormulas:
    """Formulas of a decoder-only causal LM (``FAMILY_FORMULAS['causal']``): Llama/Qwen2/Qwen3,
    Mistral, Phi-3, Gemma layers: RMSNorm, q/k/v/o projections with grouped-query attention, a SwiGLU
    MLP (gate, up, down), rotary positions (no position table), optionally tied embeddings.

    A training example is one sequence, prompt + completion, padded together; the loss scores the
    completion (``train.train_on_prompt``: every position).
    """

    lora_targets = family_mod.CAUSAL.lora_targets
    """LoRA targets when ``model.lora.target_modules`` is empty: attention and MLP projections."""
    def cpu_sticky_layers(self, checkpointing: bool) -> int:
        """CPU: layers' worth of activation memory resident beside all saved activations at the start
        of backward (sticky RSS). Without checkpointing one: the last layer's backward builds the
        gradients of its activations (about what the layer saved) before glibc hands freed pages back.
        With checkpointing three: the two causal checkpointing points of bench/results_plan.md exceed
        one recomputed layer by 1.9 and 2.7 layers (each recompute interleaves with the layer's weight
        gradients, so the next one does not fit the holes the previous one left)."""
        return 3 if checkpointing else 1

    def spec_from_config(self, name: str, c: dict[str, Any]) -> ModelSpec:
        """A spec from a Llama/Qwen-style ``config.json`` mapping (``hidden_size``, ``num_hidden_layers``,
        ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``,
        ``vocab_size``, ``tie_word_embeddings``). Qwen2 adds q/k/v biases, Qwen3 q/k RMSNorms
        (from ``model_type``). Raises PlanError when a required key is missing."""
        try:
            heads = int(c["num_attention_heads"])
            model_type = str(c.get("model_type", ""))
            return ModelSpec(
                name=name, d_model=int(c["hidden_size"]), encoder_layers=0, decoder_layers=int(c["num_hidden_layers"]),
                encoder_heads=0, decoder_heads=heads, encoder_ffn=0, decoder_ffn=int(c["intermediate_size"]),
                vocab_size=int(c["vocab_size"]), max_positions=int(c.get("max_position_embeddings", 2048)),
                dropout=0.0, attention_dropout=float(c.get("attention_dropout", 0.0)), family=CAUSAL,
                kv_heads=int(c.get("num_key_value_heads") or heads), head_dim=int(c.get("head_dim") or 0),
                tied_embeddings=bool(c.get("tie_word_embeddings", False)),
                qkv_bias=model_type == "qwen2" or bool(c.get("attention_bias", False)),
                qk_norm=model_type.startswith("qwen3"),
            )
        except KeyError as exc:
            raise PlanError(
                f"model config of '{name}' lacks {exc}; the planner understands Llama/Qwen-style causal configs "
                f"(hidden_size, num_hidden_layers, intermediate_size, num_attention_heads, vocab_size) and "
                f"BART-style encoder-decoder ones (d_model, encoder_layers, ...)"
            ) from None

    def spec_from_tiny(self, t: Any) -> ModelSpec:
        """A spec from ``model.tiny`` (random-init llama/qwen2 with tied embeddings): hidden = d_model,
        layers = decoder_layers, intermediate = ffn_dim, kv_heads (0: attention_heads)."""
        arch = getattr(t, "architecture", "llama")
        return ModelSpec(
            name=f"random {arch} d{t.d_model} L{t.decoder_layers}", d_model=t.d_model, encoder_layers=0,
            decoder_layers=t.decoder_layers, encoder_heads=0, decoder_heads=t.attention_heads, encoder_ffn=0,
            decoder_ffn=t.ffn_dim, vocab_size=t.vocab_size, max_positions=t.max_position_embeddings, dropout=0.0,
            family=CAUSAL, kv_heads=t.kv_heads or t.attention_heads, tied_embeddings=True, qkv_bias=arch == "qwen2",
        )

    @staticmethod
    def _dims(s: ModelSpec) -> tuple[int, int, int, int]:
        """(d_model, query width, key/value width, MLP width) in elements."""
        return s.d_model, s.decoder_heads * s.head_dim_, s.kv_heads_ * s.head_dim_, s.decoder_ffn

    def _projections(self, s: ModelSpec) -> dict[str, tuple[int, int]]:
        """(in, out) of each Linear of a layer, by module name (Phi-3 fuses qkv_proj and gate_up_proj)."""
        d, q, kv, f = self._dims(s)
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d),
                "qkv_proj": (d, q + 2 * kv), "gate_up_proj": (d, 2 * f)}

    def layer_params(self, s: ModelSpec) -> int:
        """Parameters of one layer: q/k/v/o (+ q/k/v biases, + per-head q/k norms), gate/up/down, 2 RMSNorms."""
        d, q, kv, f = self._dims(s)
        attn = 2 * d * q + 2 * d * kv + (q + 2 * kv if s.qkv_bias else 0) + (2 * s.head_dim_ if s.qk_norm else 0)
        return attn + 3 * d * f + 2 * d

    def stacks(self, s: ModelSpec) -> list[tuple[int, int]]:
        """``(layers, params per layer)`` of the one stack."""
        return [(s.decoder_layers, self.layer_params(s))]

    def params(self, s: ModelSpec) -> int:
        """All parameters: token embedding, every layer, the final RMSNorm, and lm_head unless tied."""
        head = 0 if s.tied_embeddings else s.vocab_size * s.d_model
        return s.embedding_params() + head + s.decoder_layers * self.layer_params(s) + s.d_model

    def buffer_bytes(self, s: ModelSpec) -> float:
        """No fp32 buffers beside the weights count (the rotary frequencies are a few kB)."""
        return 0.0

    def linear_weights(self, s: ModelSpec) -> int:
        """Elements of every matmul weight: the layers' projections and the LM head."""
        d, q, kv, f = self._dims(s)
        return s.decoder_layers * (2 * d * q + 2 * d * kv + 3 * d * f) + s.vocab_size * d

    def largest_param(self, s: ModelSpec) -> int:
        """Elements of the embedding or an MLP matrix, whichever is larger."""
        return max(s.vocab_size * s.d_model, s.d_model * s.decoder_ffn)

    def matrices(self, s: ModelSpec) -> list[tuple[int, int]]:
        """(rows, cols) of each 2-D parameter: embedding (and an untied head), every projection."""
        d, q, kv, f = self._dims(s)
        out = [(s.vocab_size, d)] * (1 if s.tied_embeddings else 2)
        for _ in range(s.decoder_layers):
            out += [(q, d), (kv, d), (kv, d), (d, q), (f, d), (f, d), (d, f)]
        return out

    def lora_params(self, s: ModelSpec, r: int, targets: list[str]) -> int:
        """LoRA parameters over the layers' named projections."""
        proj = self._projections(s)
        return s.decoder_layers * sum(r * sum(proj[t]) for t in set(targets) if t in proj)

    def lengths(self, cfg: Config) -> tuple[int, int, int, int]:
        """``(src_len, tgt_len, seq_len, labelled_len)`` of the longest example: prompt and completion
        are ONE sequence padded together (seq_len = pad(src + tgt), not pad(src) + pad(tgt)); the
        completion is labelled, or every position with ``train.train_on_prompt``."""
        mult = cfg.train.pad_to_multiple_of
        src, tgt = cfg.data.max_source_tokens, cfg.data.max_target_tokens
        seq = math.ceil((src + tgt) / mult) * mult
        return src, tgt, seq, seq if cfg.train.train_on_prompt else tgt

    def kv_cache_elements(self, s: ModelSpec, prompt_len: int, new_tokens: int) -> float:
        """Cached values per generated sequence: layers x 2 (K and V) x kv_heads x head_dim x (prompt + new tokens)."""
        return s.decoder_layers * 2 * s.kv_heads_ * s.head_dim_ * (prompt_len + new_tokens)

    def flops_per_token(self, s: ModelSpec, src_share: float, src_len: int, tgt_len: int) -> float:
        """Training FLOPs per real token: 6 x the layers' matmul weights for every token (prompt and
        completion alike), attention as 2 x 2 x context x query width per layer over the full
        prompt + completion length (the same convention as the seq2seq count the GPU anchor's MFU
        uses), and the LM head for the completion share ``1 - src_share`` (the chunked loss)."""
        d, q, kv, f = self._dims(s)
        layer = 2 * d * q + 2 * d * kv + 3 * d * f
        attn = 2 * 2 * (src_len + tgt_len) * q
        return 6 * (s.decoder_layers * (layer + attn) + (1 - src_share) * s.vocab_size * d)

    def activations(self, spec: ModelSpec, lv: Levers, w: Workload, kind: str) -> _Acts:
        """What one micro-batch keeps for backward, op by op through a Llama/Qwen layer.

        Counted per token (checked against the tensors autograd saves, transformers 5 sdpa path):
        each RMSNorm keeps its fp32 input, rstd and normalized output (the last only when its weight
        trains); fp32 linears share one input per norm, under autocast q/k/v/gate/up each keep their
        own low-precision cast; sdpa keeps q, k, v, output and log-sum-exp; with padding (batch > 1)
        transformers hands sdpa a 4-D mask, repeats K/V to every query head and the kernel keeps a
        batch x L x L mask of the query dtype per layer; SwiGLU keeps gate, SiLU(gate), up and their
        product; each LoRA adapter keeps its dropout mask (fp32 noise on CPU, bool on CUDA) and its
        input (cast to the compute dtype). Frozen base projections keep no inputs.
        """
        d, qd, kvd, f = self._dims(spec)
        V, h, L, B = spec.vocab_size, spec.decoder_heads, w.seq_len, w.batch
        N = B * L
        lp = 2 if lv.amp else 4
        masked = B > 1 and lv.attn != "eager"
        kv_kept = qd if masked else kvd
        lora = set(lv.lora_targets) if lv.lora else set()
        norm = d * 4 + 4 + (0 if lv.lora else d * 4)
        if lv.lora:
            inputs = 0
        else:
            inputs = 5 * d * lp if lv.amp else 2 * d * 4
        if lv.attn == "eager":
            core = h * L * (4 + lp) + qd * lp  # fp32 softmax + its low-precision copy, output
        else:
            core = qd * lp + 4 * h  # output + log-sum-exp
        attn = qd * lp + 2 * kv_kept * lp + core
        if spec.qk_norm:  # fp32 input (+ normalized output when trained) of the per-head q/k norms
            attn += (qd + kvd) * (4 if lv.lora else 8)
        mlp = 4 * f * lp
        m = 1 if kind == "cuda" else 4
        proj = self._projections(spec)
        adapters = sum(proj[t][0] * (m + lp) + lv.lora_r * lp for t in lora if t in proj)
        mask = B * L * (math.ceil(L / 16) * 16 if kind == "cuda" else L) * lp if masked else 0.0
        cast = (2 * d * qd + 2 * d * kvd + 3 * d * f) * lp if lv.amp else 0.0
        layer = N * (2 * norm + inputs + attn + mlp + adapters) + mask + cast
        # token ids, the final norm, rotary cos/sin (fp32, shared by every layer)
        other = N * 8 + N * norm + 2 * L * spec.head_dim_ * 4
        head_saved, head_forward, head_transient = _head_terms(spec, lv, N, B * w.labelled_len, lp, selected=True)
        head_cast = V * d * lp if lv.amp else 0.0
        casts_all = spec.decoder_layers * cast + head_cast
        return _Acts(
            layers=[(layer, N * d * 4)], other=other, head_saved=head_saved + head_cast,
            head_forward=head_forward + head_cast, head_transient=head_transient,
            layer_transient=N * f * 2 * lp, casts_cached=casts_all if lv.amp and not lv.lora else 0.0, notes=[],
        )


FAMILY_FORMULAS: dict[str, Seq2SeqFormulas | CausalFormulas] = {SEQ2SEQ: Seq2SeqFormulas(), CAUSAL: CausalFormulas()}
"""The formulas of each model family, keyed by ``ModelSpec.family``."""


def kv_cache_bytes(spec: ModelSpec, batch: int, beams: int, prompt_len: int, new_tokens: int, bytes_per_value: int) -> float:
    """Bytes of the key/value cache when generating ``new_tokens`` for ``batch`` threads of
    ``prompt_len`` tokens with ``beams`` beams, values of ``bytes_per_value`` bytes (2: bf16/fp16).

    Causal: batch x beams x layers x 2 x kv_heads x head_dim x (prompt + new tokens) x bytes.
    Seq2seq: the decoder's self-attention K/V over the new tokens plus its cross-attention K/V over
    the source (batch x beams x decoder layers x 2 x d_model x (source + new tokens) x bytes).
    """
    return float(batch) * beams * spec.formulas.kv_cache_elements(spec, prompt_len, new_tokens) * bytes_per_value


def generation_kv_cache(cfg: Config, device: Device, spec: Optional[ModelSpec] = None) -> tuple[float, str]:
    """The key/value cache of one generation batch of cfg's decoding settings on ``device``.

    ``eval.generation.batch_size`` threads of ``data.max_source_tokens`` prompt tokens,
    ``eval.generation.num_beams`` beams, ``eval.generation.max_new_tokens`` new tokens; values in
    fp32 when ``eval.dtype`` is fp32 (or 'auto' on a CPU without native bf16), else 2 bytes.

    Returns:
        ``(bytes, explanation)`` (see :func:`kv_cache_bytes`).
    """
    spec = spec or model_spec(cfg)
    g = cfg.eval.generation
    dtype = cfg.eval.dtype
    if dtype == "auto":
        dtype = "bf16" if device.kind == "cuda" or device.bf16 else "fp32"
    nbytes = 4 if dtype == "fp32" else 2
    prompt = cfg.data.max_source_tokens
    size = kv_cache_bytes(spec, g.batch_size, g.num_beams, prompt, g.max_new_tokens, nbytes)
    if spec.family == CAUSAL:
        shape = (f"{g.batch_size} threads x {g.num_beams} beams x {spec.decoder_layers} layers x 2 x {spec.kv_heads_} kv heads x "
                 f"{spec.head_dim_} x ({prompt}+{g.max_new_tokens}) tokens x {nbytes} B")
    else:
        shape = (f"{g.batch_size} threads x {g.num_beams} beams x {spec.decoder_layers} decoder layers x 2 x {spec.d_model} x "
                 f"({prompt} source + {g.max_new_tokens} new) tokens x {nbytes} B")
    return size, shape


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
    if lv.lora and not lv.lora_targets:
        lv = replace(lv, lora_targets=spec.formulas.lora_targets)
    P = spec.params()
    if lv.lora:
        trainable = spec.lora_params(lv.lora_r, list(lv.lora_targets))
    else:
        trainable = P - (spec.embedding_params() if lv.freeze_embeddings else 0)
    n = max(1, lv.ranks)
    weights = 4.0 * P + spec.formulas.buffer_bytes(spec)
    if lv.lora:
        weights += 4.0 * trainable
    grads_total = 4.0 * trainable
    opt_state, opt_scratch = _optimizer_bytes(spec, lv, trainable)
    a = spec.formulas.activations(spec, lv, w, kind)
    notes = list(a.notes)
    factor = CUDA_ACTIVATION_FACTOR if kind == "cuda" else 1.0
    host = 0.0
    grad_scale = 1.0  # share of each gradient this rank keeps
    if n > 1 or lv.cpu_offload:
        # FSDP FULL_SHARD: each rank keeps 1/N of weights, grads and states, and gathers one layer
        # (plus the next, prefetched) in full while it runs
        layer = 4.0 * max(p for _, p in spec.stacks())
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
    frozen_head = lv.lora or (lv.freeze_embeddings and spec.tied_embeddings)
    g_head = 0.0 if frozen_head else 4.0 * spec.vocab_size * spec.d_model * grad_scale
    g_early = grads_total_dev if lv.lora else 0.0
    g_layers = [0.0 if lv.lora else 4.0 * p * grad_scale for _, p in spec.stacks()]
    persist = grads_total_dev if w.accumulation > 1 else 0.0

    ckpt = lv.gradient_checkpointing
    saved = [inp if ckpt else full for full, inp in a.layers]
    acts_total = sum(c * sv for (c, _), sv in zip(spec.stacks(), saved)) + a.other + a.head_saved

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
        first = spec.formulas.cpu_sticky_layers(ckpt) * max(full for full, _ in a.layers)
        add("start of backward", grads + g_head, acts + first, a.head_transient)
    else:
        add("start of backward", grads, acts, a.head_transient)
    acts -= a.head_saved
    grads = max(persist, grads + g_head)
    for (count, _), kept, (layer_full, _), g in zip(spec.stacks(), saved, a.layers, g_layers):
        for _ in range(count):
            recompute = layer_full if ckpt else 0.0  # checkpointing re-runs the layer's forward here
            add("backward", grads, acts + recompute, a.layer_transient)
            acts -= kept
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
    lv = levers_from_config(cfg, dev, ranks=ranks, cpu_offload=cpu_offload, spec=spec)
    w = workload or workload_from_config(cfg, max_tokens, spec)
    return estimate(spec, lv, w, dev)


# -------------------------------------------------------------------------- corpus lengths
def kaggle_like_lengths(n: int, max_src: int = 1024, max_tgt: int = 256, seed: int = 0) -> tuple[Any, Any]:
    """Email-like source and target lengths in tokens (two int arrays [n]) at the given limits.

    Log-normal around 60% of ``max_src`` (sigma 0.7; about 23% of sources at the 1,024-token limit)
    and 35% of ``max_tgt`` (sigma 0.4), clipped to [32, max_src] and [8, max_tgt]: the generator of
    the H200 measurements, whose 4,167 threads at 1,024 / 256 sum to 3.05M tokens, the
    ``KAGGLE_EPOCH_TOKENS`` of :mod:`threadsum.train.cost` (DATA.md bounds the real corpus at 3-4M; its median summary
    is about 110 BART tokens, a little above this generator's 89).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    src = np.clip(rng.lognormal(math.log(max_src * 0.6), 0.7, n), min(32, max_src), max_src).astype(np.int64)
    tgt = np.clip(rng.lognormal(math.log(max_tgt * 0.35), 0.4, n), min(8, max_tgt), max_tgt).astype(np.int64)
    return src, tgt


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
    one = workload_from_config(cfg, 0, spec)
    lo_tokens = int(one.tokens)  # a micro-batch holds at least one whole thread
    hi_tokens = max(cfg.train.batch_tokens, lo_tokens)
    first = estimate(spec, lv, workload_from_config(cfg, lo_tokens, spec), dev)
    if not first.fits:
        return None
    best_tokens, best_plan = lo_tokens, first
    step = 256
    lo, hi = lo_tokens // step, hi_tokens // step
    while lo < hi:  # peak grows with the budget: binary search
        mid = (lo + hi + 1) // 2
        p = estimate(spec, lv, workload_from_config(cfg, mid * step, spec), dev)
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
    base = levers_from_config(cfg, dev, ranks=ranks, spec=spec)
    offloaded = levers_from_config(cfg, dev, ranks=ranks, cpu_offload=True, spec=spec)  # the loss path an FSDP run takes
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
                        lv = replace(offloaded if offload else base, precision=prec, gradient_checkpointing=ckpt,
                                     optimizer=opt, lora=lora)
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
