"""Time and money per epoch on SageMaker training instances, and the `threadsum plan` command.

Throughput comes from measurements where they exist (BART-large on one H200 and on a 2-vCPU
CPU, see BENCHMARKS.md / DESIGN.md) and otherwise from an MFU model: the H200's measured
model-FLOPs utilization applied to each GPU's peak tensor throughput, scaled by the FLOPs per
token of the configured model. Every row says which one it used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

from threadsum.config import Config
from threadsum.train import memory as mem
from threadsum.train.calibrate import describe as describe_calibration
from threadsum.train.calibrate import find_calibration, rate_for

# Measured anchors (BART-large, bf16 autocast, token-budget batches of 16k): tokens/s.
H200_MEASURED = {"full": 45_600.0, "checkpointing": 57_000.0, "lora": 98_000.0}
# This project's 2-vCPU development machine (BART-large, DESIGN.md): fp32 and bf16 autocast tokens/s.
CPU_MEASURED = {"fp32": 105.0, "bf16": 240.0}
CPU_MEASURED_VCPUS = 2
# Training speed grows sub-linearly with vCPUs: a vCPU is a hyperthread (two share a core's FMA
# units), and the step streams weights, activations and AdamW state through DRAM, so it is memory-
# bandwidth bound. Assumed: each doubling of vCPUs gives 1.5x (rate ~ vCPUs^0.585), i.e. 3.4x from
# 2 to 16 vCPUs and 7.7x to 72, not 8x and 36x. Not measured on those instances.
CPU_DOUBLING_GAIN = 1.5
MULTI_GPU_EFFICIENCY = 0.9  # data parallel across the GPUs of one instance
PADDING_OVERHEAD = 1.05  # length-sorted token-budget batches pad about 5%
# The Kaggle corpus at BART's limits (1,024 source / 256 target tokens): one epoch over all 4,167
# threads was counted at 3.05M real (unpadded) tokens with BART's tokenizer (the epoch of the H200
# measurements in BENCHMARKS.md); the corpus notes bound it at 5.3M and put it at 3-4M in practice.
KAGGLE_EPOCH_TOKENS, KAGGLE_THREADS = 3_050_000, 4_167


CPU_SCALING_SOURCE = ("assumed, not measured on those instances: 1.5x per doubling of vCPUs (vCPUs are "
                      "hyperthreads and the step is memory-bandwidth bound); the one measured doubling, 1 -> 2 "
                      "threads on the 2-vCPU dev machine, is in BENCHMARKS.md (planner, time)")
"""Where the vCPU scaling of the CPU rows comes from (printed under the cost table)."""


def cpu_speedup(vcpus: int, from_vcpus: int = CPU_MEASURED_VCPUS) -> float:
    """Speed of ``vcpus`` relative to a machine of ``from_vcpus`` (default: the quoted 2-vCPU one);
    ``CPU_DOUBLING_GAIN`` per doubling, see :data:`CPU_SCALING_SOURCE`."""
    return CPU_DOUBLING_GAIN ** math.log2(max(1, vcpus) / max(1, from_vcpus))


def cpu_rate(vcpus: int, precision: str = "fp32") -> float:
    """BART-large training tokens/s on ``vcpus`` (fp32 unless the CPU has native bf16)."""
    return CPU_MEASURED[precision] * cpu_speedup(vcpus)


@lru_cache(maxsize=None)
def instance_catalog() -> dict[str, Any]:
    """SageMaker training instance types from ``resources/sagemaker_instances.yaml`` (read once, cached).

    Returns:
        ``{prices_as_of, region, currency, spot_discount, instances: {type: {vcpus, ram_gib, gpu,
        gpus, price, [note]}}}``; ``price`` is the on-demand list price in USD per instance-hour
        (us-east-1, from the SageMaker pricing page as of ``prices_as_of``), ``ram_gib`` in GiB,
        ``spot_discount`` the assumed share saved by managed spot (0.65).
    """
    return mem._resource("sagemaker_instances.yaml")


def flops_per_token(spec: mem.ModelSpec, src_share: float, src_len: int, tgt_len: int) -> float:
    """Training FLOPs (forward + backward = 6 x params touched) per real token, with attention.

    The 6 x parameters rule (2 forward + 4 backward FLOPs per weight per token) is Kaplan et al.,
    "Scaling Laws for Neural Language Models" (2020). Attention (scores and weighted sum) is counted
    as 2 x 2 x context x width extra weights per layer inside the same 6 x. The family decides the
    rest (``flops_per_token`` of :class:`~threadsum.train.memory.Seq2SeqFormulas`: source tokens pass
    the encoder, target tokens the decoder and the LM head, decoder context target + source;
    :class:`~threadsum.train.memory.CausalFormulas`: every token passes every layer, context the full
    prompt + completion, the LM head for the completion share only).

    Args:
        spec: the architecture.
        src_share: share of an epoch's real tokens that are source (prompt) tokens (0..1).
        src_len: source (prompt) length in tokens seen by attention.
        tgt_len: target (completion) length in tokens seen by attention.

    Returns:
        FLOPs per token (a token-weighted average of source and target tokens).
    """
    return spec.formulas.flops_per_token(spec, src_share, src_len, tgt_len)


@dataclass
class EpochTokens:
    """Size of one training epoch: real (unpadded) tokens, threads, the source share of the tokens and
    where the numbers come from (counted in the prepared folder, or the Kaggle corpus scale)."""

    tokens: float  # real tokens of the training split (source + target)
    threads: int
    src_share: float
    source: str  # where the numbers come from


def epoch_tokens(cfg: Config) -> EpochTokens:
    """Tokens of one epoch: counted from the prepared folder when it exists, else the Kaggle corpus's measured scale.

    The fallback is ``KAGGLE_EPOCH_TOKENS`` (3.05M tokens for 4,167 threads, counted with BART's
    tokenizer; BENCHMARKS.md) times the training share ``1 - validation_fraction - test_fraction``,
    with an assumed source share of 0.85. Any failure to read the prepared folder (missing, or the
    ``datasets`` extra not installed) falls back; nothing is raised.
    """
    try:
        from threadsum.data.prepared import open_prepared

        prep = open_prepared(cfg.data.prepared_dir)
        ds = prep.datasets()["train"]
        src = sum(len(x) for x in ds["input_ids"])
        tgt = sum(len(x) for x in ds["labels"])
        if src + tgt > 0:
            return EpochTokens(src + tgt, len(ds), src / (src + tgt), f"counted in {cfg.data.prepared_dir} (train split)")
    except Exception:  # no prepared data (or no datasets installed): fall back to the documented scale
        pass
    share = 1 - cfg.data.validation_fraction - cfg.data.test_fraction
    threads = round(KAGGLE_THREADS * share)
    return EpochTokens(KAGGLE_EPOCH_TOKENS * share, threads, 0.85,
                       f"Kaggle corpus scale: {KAGGLE_EPOCH_TOKENS / 1e6:.2f}M tokens per {KAGGLE_THREADS} threads x {share:.0%} train split")


@dataclass
class CostRow:
    """One instance type in the cost table: ``memory_gib`` per GPU (GiB; RAM for CPU instances),
    ``price`` on-demand USD/hour, ``tokens_per_s`` training throughput of the whole instance,
    ``epoch_hours`` (hours), ``epoch_cost`` / ``epoch_cost_spot`` (USD per epoch; inf when it does
    not fit), ``basis`` how the throughput was obtained, ``levers`` the option used."""

    instance: str
    accelerator: str
    gpus: int
    memory_gib: float
    vcpus: int
    price: float
    tokens_per_s: float
    basis: str  # "measured" or "MFU model" / "CPU scaling"
    epoch_hours: float
    epoch_cost: float
    epoch_cost_spot: float
    fits: bool
    levers: str
    note: str = ""


def _lever_factor(lv: mem.Levers) -> float:
    f = 1.0
    if lv.gradient_checkpointing:
        f *= mem.SPEED["gradient_checkpointing"]
    if lv.optimizer in mem.SPEED:
        f *= mem.SPEED[lv.optimizer]
    if lv.cpu_offload:
        f *= mem.SPEED["cpu_offload"]
    return f


def _gpu_rate(spec: mem.ModelSpec, gpu: mem.Device, option: mem.FitOption, et: EpochTokens) -> tuple[float, str]:
    """Tokens/s of one GPU for this option: the H200 measurement where it applies, else the MFU model."""
    lv, w = option.plan.levers, option.plan.workload
    large = mem.ModelSpec.from_hf_config("facebook/bart-large", mem.known_models()["facebook/bart-large"])
    is_large = (spec.family, spec.d_model, spec.encoder_layers, spec.vocab_size) == (large.family, large.d_model, large.encoder_layers, large.vocab_size)
    anchor_key = "lora" if lv.lora else ("checkpointing" if lv.gradient_checkpointing else "full")
    if gpu.name == "H200" and is_large and lv.amp and lv.optimizer == "adamw" and not lv.cpu_offload:
        return H200_MEASURED[anchor_key], "measured (H200)"
    # MFU of the measured full fine-tune; LoRA keeps its measured speed-up over it
    mfu = H200_MEASURED["full"] * flops_per_token(large, 0.8, 1024, 256) / (mem.gpu_catalog()["H200"]["tflops_lp"] * 1e12)
    peak = gpu.tflops_lp if lv.amp else gpu.tflops_fp32
    rate = mfu * peak * 1e12 / flops_per_token(spec, et.src_share, w.src_len, w.tgt_len) * _lever_factor(lv)
    if lv.lora:
        rate *= H200_MEASURED["lora"] / H200_MEASURED["full"]
    # the anchor used 16k-token micro-batches; smaller ones keep the GPU less busy
    rate *= mem._micro_batch_efficiency(option.max_tokens, "cuda") / mem._micro_batch_efficiency(16384, "cuda")
    return rate, f"MFU model ({mfu:.1%})"


def cost_table(cfg: Config, *, spot_discount: Optional[float] = None) -> tuple[list[CostRow], dict[str, Any]]:
    """One row per instance type, cheapest epoch first; instances the model cannot fit go last.

    GPU rows use the fitting option (:func:`threadsum.train.memory.fit_options`; LoRA only when the
    config enables it) with the highest throughput: the H200 measurement where it applies, else
    the MFU model; multi-GPU instances scale by ``MULTI_GPU_EFFICIENCY`` (0.9, assumed). CPU rows
    use this machine's stored fp32 calibration of cfg (``threadsum plan --calibrate``) where it exists,
    else the quoted 2-vCPU BART-large fp32 rate scaled by FLOPs per token, either scaled by
    :func:`cpu_speedup` to the instance's vCPUs, and the largest budget that fits the RAM. Epoch time counts ``PADDING_OVERHEAD`` (5%) of padding.

    Args:
        spot_discount: share saved by spot (0..1); None: the catalogue's.

    Returns:
        ``(rows, meta)``; ``meta`` holds ``prices_as_of``, ``region``, ``spot_discount``,
        ``epoch_tokens``, ``epoch_threads``, ``tokens_source``, ``model`` and ``epochs``.

    Raises:
        PlanError: the configured model's architecture cannot be read.
    """
    from threadsum.train.loss import chunk_tokens_for  # needs torch: planning needs the [train] extra

    cat = instance_catalog()
    discount = cat["spot_discount"] if spot_discount is None else spot_discount
    spec = mem.model_spec(cfg)
    et = epoch_tokens(cfg)
    padded = et.tokens * PADDING_OVERHEAD
    calibrated_fp32 = find_calibration(cfg, "fp32")
    rows: list[CostRow] = []  # GPU rows use each GPU's fastest fitting option
    for name, it in cat["instances"].items():
        price = float(it["price"])
        if it["gpus"]:
            gpu = mem._catalog_device(it["gpu"])
            gcfg = cfg
            if it["gpus"] > 1:  # DDP across the instance's GPUs: the loss path of several processes
                gcfg = cfg.model_copy(deep=True)
                gcfg.train.loss_chunk_tokens = chunk_tokens_for(cfg.train.loss_chunk_tokens, distributed=True)
            try:
                opts = [o for o in mem.fit_options(gcfg, gpu) if not o.changes_model or cfg.model.lora.enabled]
            except mem.PlanError:
                opts = []
            if not opts:
                rows.append(CostRow(name, it["gpu"], it["gpus"], gpu.memory_gib, it["vcpus"], price, 0.0, "-",
                                    math.inf, math.inf, math.inf, False, "does not fit one GPU"))
                continue
            best = max(opts, key=lambda o: _gpu_rate(spec, gpu, o, et)[0])
            rate, basis = _gpu_rate(spec, gpu, best, et)
            if it["gpus"] > 1:
                rate *= it["gpus"] * MULTI_GPU_EFFICIENCY
            levers, mem_gib = best.label, gpu.memory_gib
        else:
            ram = mem.Device(f"{name} RAM", "cpu", int(it["ram_gib"] * mem.GiB), False)
            # the largest micro-batch budget that fits the RAM (accumulation keeps the effective batch)
            found = mem._largest_budget(cfg, spec, mem.levers_from_config(cfg, ram, spec=spec), ram)
            fits = found is not None
            # fp32: m5/c5 (Skylake/Cascade Lake) lack avx512_bf16, so bf16 autocast would be emulated
            rate, basis = _cpu_instance_rate(cfg, spec, et, it["vcpus"], calibrated_fp32)
            mem_gib = float(it["ram_gib"])
            levers = f"fp32, max_tokens={found[0]}" if found else "fp32"
            if not fits:
                rows.append(CostRow(name, "CPU", 0, mem_gib, it["vcpus"], price, 0.0, "-", math.inf, math.inf, math.inf,
                                    False, "does not fit RAM"))
                continue
        hours = padded / rate / 3600
        rows.append(CostRow(name, it["gpu"] or "CPU", it["gpus"], mem_gib, it["vcpus"], price, rate, basis, hours,
                            hours * price, hours * price * (1 - discount), True, levers,
                            it.get("note", "")))
    rows.sort(key=lambda r: (not r.fits, r.epoch_cost, r.epoch_hours))
    meta = {"prices_as_of": cat["prices_as_of"], "region": cat["region"], "spot_discount": discount,
            "epoch_tokens": et.tokens, "epoch_threads": et.threads, "tokens_source": et.source, "model": spec.name,
            "epochs": cfg.train.epochs, "cpu_calibration_fp32": calibrated_fp32, "this_machine": this_machine(cfg, et)}
    return rows, meta


def _cpu_instance_rate(cfg: Config, spec: mem.ModelSpec, et: EpochTokens, vcpus: int,
                       calibrated: Optional[dict[str, Any]]) -> tuple[float, str]:
    """Tokens/s of a CPU instance and its basis: this machine's stored fp32 calibration of cfg
    (measured) scaled to ``vcpus`` (assumed, :data:`CPU_SCALING_SOURCE`), else the quoted 2-vCPU
    BART-large figure scaled by FLOPs per token and vCPUs (both assumed)."""
    if calibrated is not None:
        rate = rate_for(calibrated, cfg.train.batch_tokens) * cpu_speedup(vcpus, calibrated["threads"])
        return rate, (f"measured here (fp32, {calibrated['threads']} threads) x {cpu_speedup(vcpus, calibrated['threads']):.1f} "
                      f"assumed vCPU scaling")
    large = mem.ModelSpec.from_hf_config("facebook/bart-large", mem.known_models()["facebook/bart-large"])
    fpt = flops_per_token(spec, et.src_share, cfg.data.max_source_tokens, cfg.data.max_target_tokens)
    rate = cpu_rate(vcpus) * flops_per_token(large, 0.8, 1024, 256) / fpt
    return rate, f"assumed: quoted 2-vCPU rate x {cpu_speedup(vcpus):.1f} (no calibration)"


def this_machine(cfg: Config, et: Optional[EpochTokens] = None) -> Optional[dict[str, Any]]:
    """The epoch on this machine's CPU from its stored calibration of cfg at the precision ``auto``
    resolves to here, or None without one (run ``threadsum plan --calibrate``).

    Returns:
        ``{precision, threads, tokens_per_s (real tokens/s at train.batch_tokens), epoch_hours,
        calibration (the stored entry)}``. The calibrated rate already includes the sampler's padding,
        so no ``PADDING_OVERHEAD`` is added.
    """
    from threadsum.devices import auto_precision, cpu_has_native_bf16

    precision = cfg.train.precision
    if precision == "auto":
        precision = auto_precision("cpu", cpu_has_native_bf16())
    entry = find_calibration(cfg, precision)
    if entry is None:
        return None
    et = et or epoch_tokens(cfg)
    rate = rate_for(entry, cfg.train.batch_tokens)
    return {"precision": precision, "threads": entry["threads"], "tokens_per_s": rate,
            "epoch_hours": et.tokens / rate / 3600, "calibration": entry}


def pick_instance(cfg: Config) -> str:
    """The SageMaker instance type with the cheapest epoch on which cfg fits (GPU instances preferred).

    Raises:
        PlanError: no instance in the catalogue fits the model, or its architecture cannot be read.
    """
    rows, _ = cost_table(cfg)
    fitting = [r for r in rows if r.fits and r.gpus > 0] or [r for r in rows if r.fits]
    if not fitting:
        raise mem.PlanError(f"no SageMaker instance in the catalog fits {mem.model_spec(cfg).name}; enable LoRA or shorten the inputs")
    return fitting[0].instance


# ---------------------------------------------------------------------------------- command
def _gib(b: float) -> str:
    return f"{b / mem.GiB:.2f}"


def plan_command(cfg: Config, device: str = "auto", cost: bool = False, *, ranks: int = 1, cpu_offload: bool = False,
                 console: Any = None) -> dict[str, Any]:
    """`threadsum plan`: the memory breakdown on ``device``, the options that fit and the pick; with
    ``cost`` the per-instance time and money table. Returns what it printed, as data."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    plan = mem.plan_memory(cfg, device, ranks=ranks, cpu_offload=cpu_offload)
    dev = plan.device
    t = Table(title=f"{plan.model.name} on {dev.name} ({dev.memory_gib:.1f} GiB): max_tokens={cfg.train.max_tokens}, "
                    f"{plan.levers.precision}, {plan.levers.optimizer}"
                    + (", checkpointing" if plan.levers.gradient_checkpointing else "") + (", LoRA" if plan.levers.lora else ""))
    t.add_column("part")
    t.add_column("GiB", justify="right")
    t.add_column("what")
    for name, b, why in plan.breakdown():
        t.add_row(name, _gib(b), why)
    t.add_row("[bold]peak[/bold]", f"[bold]{_gib(plan.peak)}[/bold]",
              f"usable {_gib(plan.capacity)} GiB after headroom -> " + ("[green]fits[/green]" if plan.fits else "[red]does not fit[/red]"))
    console.print(t)
    for n in plan.notes:
        console.print(f"  note: {n}")
    kv, kv_shape = mem.generation_kv_cache(cfg, dev, plan.model)
    console.print(f"generation KV cache: {_gib(kv)} GiB ({kv_shape}; eval.generation, beside the weights)")
    result: dict[str, Any] = {"plan": plan.to_dict(), "kv_cache_gib": kv / mem.GiB}
    try:
        options = mem.fit_options(cfg, dev, ranks=ranks)
    except mem.PlanError as exc:
        options = []
        console.print(f"[red]{exc}[/red]")
    if options:
        o = Table(title="options that fit (fastest first; speed relative to the config as written)")
        for c in ("#", "levers", "peak GiB", "speed", "overrides"):
            o.add_column(c)
        for i, opt in enumerate(options[:12], 1):
            o.add_row(str(i), opt.label + (" [yellow](changes what is trained)[/yellow]" if opt.changes_model else "")
                      + (f" [dim]({opt.note})[/dim]" if opt.note else ""),
                      _gib(opt.plan.peak), f"{opt.speed:.2f}x", " ".join(opt.overrides) or "-")
        console.print(o)
        console.print("speed factors: checkpointing 0.75x, Adafactor/8-bit AdamW 0.97x, CPU offload 0.35x, "
                      "bf16 autocast 2x on tensor cores; smaller micro-batches lose efficiency (half speed at 1k tokens on GPU)")
    try:
        overrides, picked = mem.auto_fit(cfg, dev, ranks=ranks)
        console.print(f"pick: {' '.join(overrides) or '(the config as written)'}  -> peak {_gib(picked.peak)} GiB, "
                      f"accumulation {math.ceil(cfg.train.batch_tokens / max(1, picked.workload.tokens))} micro-batches of "
                      f"<= {int(picked.workload.tokens)} tokens per optimizer step (train.batch_tokens={cfg.train.batch_tokens} kept)")
        result["pick"] = overrides
    except mem.PlanError as exc:
        console.print(f"[red]{exc}[/red]")
        result["pick"] = None
    result["options"] = [{"label": o.label, "overrides": o.overrides, "peak_gib": o.plan.peak / mem.GiB, "speed": o.speed} for o in options]
    if cost:
        rows, meta = cost_table(cfg)
        et = epoch_tokens(cfg)
        ct = Table(title=f"cost per epoch ({meta['epoch_threads']} threads, {meta['epoch_tokens'] / 1e6:.2f}M tokens; "
                         f"{meta['region']} on-demand prices as of {meta['prices_as_of']}: check them before you spend)")
        for c in ("instance", "GPUs", "mem GiB", "vCPU", "$/h", "tokens/s", "basis", "epoch h", "$ on-demand", "$ spot", "levers"):
            ct.add_column(c, justify="right" if c not in ("instance", "basis", "levers") else "left")
        for r in rows:
            ct.add_row(r.instance, f"{r.gpus}x {r.accelerator}" if r.gpus else "CPU", f"{r.memory_gib:.0f}", str(r.vcpus),
                       f"{r.price:.2f}", f"{r.tokens_per_s:,.0f}" if r.fits else "-", r.basis,
                       f"{r.epoch_hours:.2f}" if r.fits else "-", f"{r.epoch_cost:.2f}" if r.fits else "-",
                       f"{r.epoch_cost_spot:.2f}" if r.fits else "-", r.levers + (f" ({r.note})" if r.note else ""))
        console.print(ct)
        console.print(f"tokens: {meta['tokens_source']}; +{PADDING_OVERHEAD - 1:.0%} padding. Spot = on-demand x "
                      f"{1 - meta['spot_discount']:.2f}. GPU rates without a measurement use the H200's measured MFU on each "
                      f"GPU's peak tensor TFLOP/s.")
        cal = meta["cpu_calibration_fp32"]
        if cal is not None:
            console.print(f"CPU rows (fp32: m5/c5 have no native bf16): this machine's calibration, {describe_calibration(cal)}; "
                          f"scaled to each instance's vCPUs by {CPU_DOUBLING_GAIN}x per doubling, {CPU_SCALING_SOURCE}.")
        else:
            console.print(f"CPU rows (fp32: m5/c5 have no native bf16): assumed, no fp32 calibration of this config here: the "
                          f"quoted 2-vCPU BART-large fp32 rate ({CPU_MEASURED['fp32']:.0f} tokens/s, BENCHMARKS.md) scaled by FLOPs "
                          f"per token and to each instance's vCPUs by {CPU_DOUBLING_GAIN}x per doubling, {CPU_SCALING_SOURCE}; "
                          f"`threadsum plan --calibrate train.precision=fp32` measures it.")
        here = meta["this_machine"]
        if here is not None:
            same = cal is not None and cal["key"] == here["calibration"]["key"]
            console.print(f"[bold]this machine[/bold] ({here['threads']} threads, {here['precision']}): "
                          f"{here['tokens_per_s']:,.0f} real tokens/s at train.batch_tokens={cfg.train.batch_tokens} "
                          f"-> [bold]{here['epoch_hours']:.2f} h per epoch[/bold] (measured: "
                          f"{'the calibration above' if same else describe_calibration(here['calibration'])}; "
                          f"the sampler's padding included, no extra padding added).")
        else:
            console.print("this machine: no calibration of this config here; `threadsum plan --calibrate` measures "
                          "it in under 2 minutes and `plan --cost` then predicts this machine's epoch.")
        result["cost"] = [r.__dict__ for r in rows]
        result["cost_meta"] = meta
    return result
