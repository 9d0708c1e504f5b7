"""Memory planner: predict the peak memory of a training step, list the levers that fit, auto-fit.

The prediction is arithmetic over the model's architecture (no model is built), following what
PyTorch actually keeps alive during one optimizer step:

    peak = overhead + weights + optimizer states
           + max(activations + head transient + first gradient,   # start of backward
                 gradients + optimizer temporaries)                # optimizer step

* weights: fp32 master copies (autocast keeps them fp32), plus final_logits_bias.
* gradients: fp32, trainable parameters only (LoRA: the adapters).
* optimizer states: AdamW 8 B/param, 8-bit AdamW 2 B/param, Adafactor rows + columns per matrix.
* activations: the tensors autograd saves, counted per token and per layer from the ops of a
  BART layer (projections, attention, dropout masks, LayerNorm inputs, GELU); under autocast the
  low-precision copies of every weight (saved for backward) and of every linear input; the
  fp32 logits and log-softmax of the loss; the 4-D attention masks.
* head transient: the gradients of the logits (the largest temporaries of backward).

Constants that differ by backend are explicit below (dropout masks are bool on CUDA but full
tensors on CPU; CPU ``sdpa`` with attention dropout falls back to the math kernel, which
materializes the attention matrix in fp32). ``bench/calibrate_memory.py`` measures real CPU
peaks; ``tests/unit/test_plan_memory.py`` holds every measured point to 15%.
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

GiB = 1024**3
MiB = 1024**2

# Fixed costs not proportional to the model. CPU: the autograd graph, oneDNN scratch and glibc
# arenas of one step (measured on a 48-token step: ~28 MB stays after the first forward, ~45 MB
# more is transient beyond the gradients; see bench/results_plan.md). CUDA: the
# CUDA context + cuBLAS/cuDNN workspaces, which live outside max_memory_allocated but count
# against the card.
CPU_OVERHEAD_BYTES = 80 * MiB
CUDA_CONTEXT_BYTES = int(0.75 * GiB)
# Share of the device kept free for allocator fragmentation and length outliers.
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


class PlanError(ValueError):
    """A device or model cannot be planned; the message says what to pass instead."""


# ------------------------------------------------------------------------------- resources
def _resource(name: str) -> dict[str, Any]:
    text = resources.files("threadsum").joinpath("resources", name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


@lru_cache(maxsize=None)
def gpu_catalog() -> dict[str, dict[str, Any]]:
    return _resource("gpus.yaml")


@lru_cache(maxsize=None)
def known_models() -> dict[str, Any]:
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
        return self._attn() + self._ffn(self.encoder_ffn) + 4 * self.d_model

    def decoder_layer_params(self) -> int:
        return 2 * self._attn() + self._ffn(self.decoder_ffn) + 6 * self.d_model

    def embedding_params(self) -> int:
        return self.vocab_size * self.d_model

    def params(self) -> int:
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
        d, t = self.d_model, set(targets)
        attn = sum(r * 2 * d for m in ("q_proj", "k_proj", "v_proj", "out_proj") if m in t)

        def ffn(f: int) -> int:
            return (r * (d + f) if "fc1" in t else 0) + (r * (f + d) if "fc2" in t else 0)

        return self.encoder_layers * (attn + ffn(self.encoder_ffn)) + self.decoder_layers * (2 * attn + ffn(self.decoder_ffn))


def model_spec(cfg: Config) -> ModelSpec:
    """The architecture of cfg's model: the tiny section, a local config.json, or a known hub id."""
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
    name: str
    kind: str  # "cuda" or "cpu"
    memory_bytes: int
    bf16: bool = True
    tflops_lp: float = 0.0
    tflops_fp32: float = 0.0

    @property
    def memory_gib(self) -> float:
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


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(name: str) -> Device:
    """'H100', 'a100-40', 'T4', 'cpu', 'cpu:24' (GiB of RAM), 'gpu:24' (any GPU with 24 GiB), 'auto'."""
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
        return Device(f"cpu ({_system_ram_bytes() / GiB:.0f} GiB, this machine)", "cpu", _system_ram_bytes(), _cpu_has_bf16())
    if low.startswith("cpu"):
        rest = low[3:].lstrip(":")
        if not rest:
            return Device(f"cpu ({_system_ram_bytes() / GiB:.0f} GiB, this machine)", "cpu", _system_ram_bytes(), _cpu_has_bf16())
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

    @property
    def amp(self) -> bool:
        return self.precision in ("bf16", "fp16")


def resolve_precision(precision: str, device: Device) -> str:
    if precision != "auto":
        return precision
    if device.kind == "cuda":
        return "bf16" if device.bf16 else "fp16"
    return "bf16" if device.bf16 else "fp32"


def levers_from_config(cfg: Config, device: Device, ranks: int = 1, cpu_offload: bool = False) -> Levers:
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
    )


@dataclass(frozen=True)
class Workload:
    """Shape of the largest micro-batch: ``batch`` sequences of src_len + tgt_len padded tokens."""

    batch: float
    src_len: int
    tgt_len: int

    @property
    def src_tokens(self) -> float:
        return self.batch * self.src_len

    @property
    def tgt_tokens(self) -> float:
        return self.batch * self.tgt_len

    @property
    def tokens(self) -> float:
        return self.src_tokens + self.tgt_tokens


def workload_from_config(cfg: Config, max_tokens: Optional[int] = None) -> Workload:
    """Worst case of the token-budget sampler: every thread at the longest source and summary.

    A micro-batch holds at least one thread even when the budget is smaller than one thread.
    """
    mult = cfg.train.pad_to_multiple_of
    src = math.ceil(cfg.data.max_source_tokens / mult) * mult
    tgt = math.ceil(cfg.data.max_target_tokens / mult) * mult
    budget = max_tokens if max_tokens is not None else cfg.train.max_tokens
    batch = min(max(1, budget // (src + tgt)), cfg.train.max_batch_size)
    return Workload(batch=batch, src_len=src, tgt_len=tgt)


# ---------------------------------------------------------------------------- the estimate
@dataclass
class MemoryPlan:
    """Predicted peak of one training step on one device (per rank), with its parts in bytes."""

    device: Device
    model: ModelSpec
    levers: Levers
    workload: Workload
    params: int
    trainable_params: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    temporary: float
    overhead: float
    peak: float
    host_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def capacity(self) -> float:
        """Bytes the step may use on the device, after fixed costs and headroom."""
        cap = self.device.memory_bytes * (1 - HEADROOM[self.device.kind])
        if self.device.kind == "cuda":
            cap -= CUDA_CONTEXT_BYTES
        else:
            cap -= CPU_PROCESS_BASE_BYTES
        return cap

    @property
    def fits(self) -> bool:
        return self.peak <= self.capacity

    @property
    def utilization(self) -> float:
        return self.peak / self.device.memory_bytes

    def breakdown(self) -> list[tuple[str, float, str]]:
        lv = self.levers
        opt_note = {"adamw": "2 fp32 moments", "adamw8bit": "2 int8 moments + scales", "adafactor": "factored 2nd moment"}[lv.optimizer]
        return [
            ("weights", self.weights, f"{self.params / 1e6:.1f}M params, fp32 master copy" + (" (1/N shard)" if lv.ranks > 1 else "")),
            ("gradients", self.gradients, f"{self.trainable_params / 1e6:.2f}M trainable, fp32"),
            ("optimizer states", self.optimizer, f"{lv.optimizer}: {opt_note}"),
            ("activations", self.activations,
             f"{self.workload.src_tokens:.0f} source + {self.workload.tgt_tokens:.0f} target tokens, {lv.precision}"
             + (", checkpointed" if lv.gradient_checkpointing else "")),
            ("temporary buffers", self.temporary, "logit gradients at the start of backward / optimizer scratch"),
            ("fixed overhead", self.overhead, "autograd graph, kernels' workspaces"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device.name, "capacity_gib": self.capacity / GiB, "peak_gib": self.peak / GiB, "fits": self.fits,
            "parts_gib": {k: v / GiB for k, v, _ in self.breakdown()}, "host_gib": self.host_bytes / GiB,
            "workload": {"batch": self.workload.batch, "src_len": self.workload.src_len, "tgt_len": self.workload.tgt_len},
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


def _activation_bytes(spec: ModelSpec, lv: Levers, w: Workload, kind: str) -> tuple[float, float, list[str]]:
    """(activations saved for backward, head transient in backward) for one micro-batch."""
    notes: list[str] = []
    d, V = spec.d_model, spec.vocab_size
    lp = 2 if lv.amp else 4
    # dropout keeps a bool mask on CUDA; the CPU kernel keeps a full noise tensor of the input dtype
    m_lp = (1 if kind == "cuda" else lp) if spec.dropout > 0 else 0
    m32 = (1 if kind == "cuda" else 4) if spec.dropout > 0 else 0
    lora = set(lv.lora_targets) if lv.lora else set()

    def attention_core(h: int, l_kv: int) -> float:
        """Per query token: what the attention kernel keeps beyond q/k/v."""
        materialized = lv.attn == "eager" or (kind == "cpu" and spec.attention_dropout > 0)
        if not materialized:
            return d * lp + 4 * h  # output + log-sum-exp
        if lv.attn == "eager":
            probs = h * l_kv * (4 + lp)  # fp32 softmax, low-precision copy for the value matmul
            if spec.attention_dropout > 0:
                probs += h * l_kv * ((1 if kind == "cuda" else 4) + lp)
            return probs + d * lp
        # CPU math kernel: fp32 copies of q/k/v and the fp32 probabilities (+ dropout noise and output)
        notes.append("CPU sdpa with attention dropout uses the math kernel (attention matrix materialized)")
        return 3 * d * 4 + h * l_kv * 4 * 3 + d * 4

    def attn_block(h: int, l_kv: int, self_attn: bool) -> float:
        n_in = 3 if self_attn else 1  # projections reading the query-side input
        if lv.amp:
            inputs = n_in * d * lp  # each linear keeps its own low-precision cast of the fp32 input
        else:
            inputs = d * 4  # one shared input
        projections = (3 if self_attn else 1) * d * lp
        out_in = d * lp  # the reshaped attention output, input of out_proj
        extra = 0.0
        for p in (("q_proj", "k_proj", "v_proj") if self_attn else ("q_proj",)) + ("out_proj",):
            if p in lora:  # LoRA: dropout noise on the adapter input + the adapter's own input copy
                extra += d * m32 + (d * lp if not lv.amp and p != "out_proj" else 0)
        return inputs + projections + attention_core(h, l_kv) + out_in + d * m_lp + d * 4 + 8 + extra

    def ffn_block(f: int) -> float:
        act_mask = f * m_lp if spec.activation_dropout > 0 else 0
        extra = (d * m32 if "fc1" in lora else 0) + (f * m32 if "fc2" in lora else 0)
        return d * lp + 2 * f * lp + act_mask + d * m_lp + d * 4 + 8 + extra

    def kv_per_source_token() -> float:
        """Cross-attention keys/values of one source token in one decoder layer."""
        inputs = 2 * d * lp if lv.amp else 0.0  # fp32: the encoder output is shared, counted once
        extra = sum(d * m32 for p in ("k_proj", "v_proj") if p in lora)
        return inputs + 2 * d * lp + extra

    enc_layer = attn_block(spec.encoder_heads, w.src_len, True) + ffn_block(spec.encoder_ffn)
    dec_layer = (attn_block(spec.decoder_heads, w.tgt_len, True) + attn_block(spec.decoder_heads, w.src_len, False)
                 + ffn_block(spec.decoder_ffn))
    embed = d * 4 + 8 + d * m32  # layernorm_embedding input + embedding dropout
    head_saved = d * lp + 2 * 4 * V  # lm_head input; fp32 logits (held by the loop) + log-softmax
    head_transient = (2 * 4 + (2 if lv.amp else 0)) * V  # their gradients at the start of backward
    masks = w.batch * 4 * (w.src_len**2 + w.tgt_len**2 + w.src_len * w.tgt_len)  # 4-D fp32 attention masks
    casts = spec.linear_weights() * lp if lv.amp else 0.0

    S, T = w.src_tokens, w.tgt_tokens
    if not lv.gradient_checkpointing:
        layers = S * spec.encoder_layers * enc_layer + T * spec.decoder_layers * dec_layer + S * spec.decoder_layers * kv_per_source_token()
        shared_enc_out = S * d * 4
    else:
        # only each layer's fp32 input is kept; backward recomputes one layer at a time
        layers = (S * spec.encoder_layers + T * spec.decoder_layers) * d * 4
        recompute = max(S * enc_layer, T * dec_layer + S * kv_per_source_token())
        layers += recompute
        shared_enc_out = S * d * 4
        if lv.amp:  # weight casts of the layers are re-made per layer; only the head's stay
            casts = V * d * lp + max(4 * d * d + 2 * d * spec.encoder_ffn, 8 * d * d + 2 * d * spec.decoder_ffn) * lp
    acts = layers + shared_enc_out + (S + T) * embed + T * head_saved + masks + casts
    return acts, T * head_transient, notes


def estimate(spec: ModelSpec, lv: Levers, w: Workload, device: Device) -> MemoryPlan:
    """The memory of one training step with these levers on this device (per rank)."""
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
    gradients = 4.0 * trainable
    opt_state, opt_scratch = _optimizer_bytes(spec, lv, trainable)
    acts, head_transient, notes = _activation_bytes(spec, lv, w, kind)
    # the tied embedding/lm_head gradient is the first one allocated in backward
    first_grad = 0.0 if (lv.lora or lv.freeze_embeddings) else 4.0 * spec.embedding_params()
    host = 0.0
    if n > 1 or lv.cpu_offload:
        # FSDP FULL_SHARD: each rank keeps 1/N of weights, grads and states, and gathers one layer
        # (plus the next, prefetched) in full while it runs
        layer = 4.0 * max(spec.encoder_layer_params(), spec.decoder_layer_params())
        gathered = 2 * layer + 4.0 * spec.embedding_params() / n
        if lv.cpu_offload:
            host = (weights + gradients + opt_state) / n
            weights, gradients, opt_state = gathered, layer, 0.0
            notes.append(f"CPU offload keeps {host / GiB:.1f} GiB per rank in host RAM")
        else:
            weights, gradients, opt_state = weights / n + gathered, gradients / n + layer, opt_state / n
        first_grad = first_grad / n
    overhead = CPU_OVERHEAD_BYTES if kind == "cpu" else 0.0
    backward_phase = acts + head_transient + first_grad
    step_phase = gradients + opt_scratch
    peak = overhead + weights + opt_state + max(backward_phase, step_phase)
    temporary = peak - overhead - weights - opt_state - acts - gradients
    # report the parts so they sum to the peak: the larger phase decides which parts are live together
    if backward_phase >= step_phase:
        shown_grads = first_grad
        temporary = head_transient
    else:
        shown_grads = gradients
        temporary = opt_scratch
        acts = 0.0
        notes.append("the optimizer step (not the forward/backward) sets the peak")
    return MemoryPlan(
        device=device, model=spec, levers=lv, workload=w, params=P, trainable_params=trainable,
        weights=weights, gradients=shown_grads, optimizer=opt_state, activations=acts, temporary=temporary,
        overhead=overhead, peak=peak, host_bytes=host, notes=sorted(set(notes)),
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
    """Predict the peak memory of cfg's training step on ``device`` (per rank with FSDP over ``ranks``)."""
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
    """Every lever combination that fits, with its largest budget, fastest first."""
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
    """cfg with auto_fit's overrides applied (for `threadsum train --auto-fit`)."""
    from threadsum.config import apply_overrides, config_from_dict

    overrides, plan = auto_fit(cfg, device)
    new = config_from_dict(apply_overrides(cfg.to_dict(), overrides), origin="auto-fit")
    return new, overrides, plan
