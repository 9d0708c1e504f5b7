"""The `threadsum` command line: thin wiring from sub-commands to library functions.

Heavy imports (torch, transformers, boto3, mlflow) happen inside each command so `--help` is
instant and a missing optional extra is reported by the command that needs it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from threadsum.config import Config, load_config
from threadsum.errors import ThreadsumError

app = typer.Typer(
    help="Fine-tune and serve BART-family summarizers on email threads.\n\n"
    "Every command reads one YAML config (--config, see configs/) plus section.key=value overrides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="List, report and compare tracked runs (failures included).", invoke_without_command=True)
app.add_typer(runs_app, name="runs")

console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see configs/). Defaults apply when omitted.")
OverridesArg = typer.Argument(None, help="Overrides as section.key=value, e.g. train.lr=3e-4 data.max_source_tokens=512.")


def _load(config: Optional[Path], overrides: Optional[List[str]]) -> Config:
    """The config file plus overrides; a bad value exits 2 naming the key."""
    return _run(load_config, config, overrides or [])


def quiet_libraries() -> None:
    """Show threadsum's own progress lines; keep library progress bars and advisory warnings out."""
    import logging
    import os
    import warnings

    ours = logging.getLogger("threadsum")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|torch)\b")
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:  # the [train] extra is not installed; the command will say so
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _run(fn, *args, **kwargs):
    """Call a library function; a :class:`ThreadsumError` becomes one line and its exit code.

    This is the one place errors become exit codes (the table is in :mod:`threadsum.errors`).
    Anything else is a bug or a broken environment: its traceback is shown and the exit code is 1.
    """
    quiet_libraries()
    try:
        return fn(*args, **kwargs)
    except ThreadsumError as exc:
        # one line however narrow the terminal; the message's own brackets ('threadsum[fast]') are text
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(int(exc.exit_code))


def _usage_error(message: str) -> None:
    """A command line that combines options wrongly: exit 2 with ``message`` (through ``_run``)."""
    from threadsum.errors import ConfigError

    raise ConfigError(message)


@app.command("config")
def config_cmd(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    show: bool = typer.Option(False, "--show", help="List every key with its default and meaning."),
) -> None:
    """Print the resolved config (YAML), or every available key with --show."""
    if show:
        from rich.table import Table

        from threadsum.config import describe_fields

        table = Table("key", "default", "meaning")
        for key, default, doc in describe_fields():
            table.add_row(key, default, doc)
        Console().print(table)
        return
    cfg = _load(config, overrides)
    typer.echo(cfg.to_yaml())


@app.command()
def synth(
    out_dir: Path = typer.Option(Path("data/synth"), "--out", "-o", help="Folder for the two Kaggle-format CSV files."),
    threads: int = typer.Option(4167, "--threads", "-n", help="Number of threads (4,167 = the real corpus size)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same files."),
) -> None:
    """Write a synthetic corpus in the exact Kaggle CSV format (offline stand-in for the real data)."""
    from threadsum.data.synth import synth_command

    _run(synth_command, out_dir, threads, seed)


@app.command()
def prepare(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Raw input (sets data.source): Kaggle folder/CSV/JSON, .eml folder, Maildir, .mbox, Gmail/Graph JSON, .jsonl."),
    kaggle: bool = typer.Option(False, "--kaggle", help="Download the Kaggle corpus with kagglehub (needs network and Kaggle credentials)."),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero when any row or thread is rejected."),
    force: bool = typer.Option(False, "--force", help="Ignore the tokenization cache and rebuild."),
) -> None:
    """Read raw mail, clean, render, split by thread, tokenize (cached), and write a data report."""
    extra = []
    if source:
        extra.append(f"data.source={source}")
    if kaggle:
        extra.append("data.kaggle=true")
    if strict:
        extra.append("data.strict=true")
    cfg = _load(config, (overrides or []) + extra)
    from threadsum.data.prepare import prepare_command

    _run(prepare_command, cfg, force=force, strict=cfg.data.strict)  # bad input exits 2 from inside


@app.command()
def train(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    auto_fit: bool = typer.Option(False, "--auto-fit", help="Pick memory levers and the largest micro-batch that fit this device."),
    nproc: int = typer.Option(0, "--nproc", help="Start this many processes with torchrun (data/model parallel; see train.strategy)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="'auto' (default), 'none', or a checkpoint folder."),
) -> None:
    """Fine-tune a model on a prepared dataset (checkpoints, exact resume, SIGTERM-safe)."""
    extra = []
    if auto_fit:
        extra.append("train.auto_fit=true")
    if resume:
        extra.append(f"train.resume={resume}")
    from threadsum.cloud.container import sagemaker_overrides

    sm = _run(sagemaker_overrides)
    if sm:
        extra = list(sm) + extra
    if nproc > 1:
        from threadsum.train.launch import launch_torchrun

        raise typer.Exit(_run(launch_torchrun, config, (overrides or []) + extra, nproc))
    cfg = _load(config, (overrides or []) + extra)
    if cfg.train.auto_fit:
        from threadsum.train.memory import apply_auto_fit

        cfg, fit, fit_plan = _run(apply_auto_fit, cfg, "auto")
        console.print(f"auto-fit on {fit_plan.device.name}: {' '.join(fit) or 'config already fits'} "
                      f"(predicted peak {fit_plan.peak / 2**30:.1f} GiB)")
    from threadsum.train.loop import train_command

    raise typer.Exit(_run(train_command, cfg) or 0)


@app.command()
def evaluate(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder (default: <train.output_dir>/model)."),
    split: Optional[str] = typer.Option(None, "--split", help="train, validation or test (default: eval.split)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for predictions, metrics and the report."),
) -> None:
    """Generate summaries for a split; ROUGE with CIs next to baselines; write a report."""
    cfg = _load(config, overrides)
    from threadsum.evaluate.run import evaluate_command

    model_dir = str(model or Path(cfg.train.output_dir) / "model")
    _run(evaluate_command, cfg, model_dir, split or cfg.eval.split, str(output) if output else None)


@app.command()
def summarize(
    paths: List[str] = typer.Argument(..., metavar="INPUT...", help="Without --out: one .eml, .mbox (one summary per thread), JSON thread, Gmail API / Graph JSON, a mail folder (Maildir), or '-' for stdin. With --out: any number of files and folders in every format prepare reads."),
    model: Path = typer.Option(..., "--model", "-m", help="Model folder (a trained threadsum model or any seq2seq model)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines (thread_id, summary) instead of text (without --out)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:1 or auto."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Job folder: summarize whole archives into resumable shards instead of printing."),
    ray: Optional[str] = typer.Option(None, "--ray", help="With --out: run the shards on Ray Data: local, auto (the cluster Ray finds) or a cluster address."),
    restart: bool = typer.Option(False, "--restart", help="With --out: discard the folder's results and start over (after a change of inputs, model or settings)."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="With --out: threads per shard (default 100; a resumed job keeps its own)."),
    cores: int = typer.Option(0, "--cores", help="With --out: CPU threads per engine (local: the one engine; Ray: each actor); 0: all usable cores locally, 4 per CPU actor."),
    actors: int = typer.Option(0, "--actors", help="With --ray: actor pool size (0: as many as the CPUs or GPUs allow)."),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", help="With --ray: GPUs per actor (0: 1 when the cluster has GPUs)."),
    settings: Optional[List[str]] = typer.Option(None, "--set", help="With --out: section.key=value over the model's saved config, e.g. eval.generation.num_beams=2 (repeatable)."),
) -> None:
    """Summarize a thread, or whole archives into a resumable job folder (--out). Exit codes: 0 ok, 2 bad input, 1 failure."""
    if out is None:
        archive_only = [name for name, given in (("--ray", ray), ("--restart", restart), ("--shard-size", shard_size),
                                                 ("--cores", cores), ("--actors", actors),
                                                 ("--gpus-per-actor", gpus_per_actor), ("--set", settings)) if given]
        if archive_only or len(paths) != 1:
            what = f"{', '.join(archive_only)} need(s)" if archive_only else f"{len(paths)} inputs need"
            _run(_usage_error, f"{what} --out DIR (a job folder); without it summarize prints the summaries of "
                               f"one input")
        from threadsum.inference.summarizer import summarize_command

        _run(summarize_command, str(model), paths[0], as_json=as_json, device=device)
        return
    if as_json:
        _run(_usage_error, "--json prints to the terminal; with --out the results are JSON lines in DIR/shards/ "
                           "already: drop --json")
    from threadsum.archive.job import ArchiveOptions, archive_command

    opts = ArchiveOptions(inputs=list(paths), model=str(model), out=out, device=device, overrides=list(settings or []),
                          shard_size=shard_size, cores=cores, ray=ray, actors=actors, gpus_per_actor=gpus_per_actor,
                          restart=restart)
    _run(archive_command, opts)


@app.command()
def verify(
    thread: Path = typer.Option(..., "--thread", "-t", help="The thread: .eml, .mbox, a JSON thread (or JSON lines), or plain text."),
    summary: str = typer.Option(..., "--summary", "-s", help="The summary to check, or @FILE to read it from a file."),
    as_json: bool = typer.Option(False, "--json", help='Print {"claims": [{text, kind, supported, evidence, start, end, reason}]}.'),
) -> None:
    """Check a summary against its thread: people, organisations, amounts, dates, times, actions.

    Exit code 0 whatever it finds (unsupported claims are the output, not an error); 2 for bad input.
    Every email of FILE counts as evidence (an .mbox holding several threads is checked as one).
    """
    from threadsum.verify.command import verify_command

    _run(verify_command, thread, summary, as_json)


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="Model folder to convert (a trained threadsum model; a LoRA adapter is merged first)."),
    fmt: str = typer.Option("ctranslate2", "--format", help="Output format: ctranslate2."),
    quantization: str = typer.Option("int8", "--quantization", "-q", help="int8, int8_float32 (CPU); float16, int8_float16 (GPU); float32."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder; summarize/serve/evaluate use it as a model folder."),
    force: bool = typer.Option(False, "--force", help="Replace --out when it exists."),
) -> None:
    """Convert a model for fast inference (CTranslate2: int8 on CPU, float16 on GPU). Needs threadsum[fast]."""
    from threadsum.inference.export import export_command

    _run(export_command, str(model_dir), str(out), fmt, quantization, force)


@app.command()
def serve(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder to serve (with --sagemaker: default SM_MODEL_DIR or /opt/ml/model)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    host: Optional[str] = typer.Option(None, "--host", help="Interface (default serve.host = 127.0.0.1; 0.0.0.0 with --sagemaker)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default serve.port = 8000; SAGEMAKER_BIND_TO_PORT or 8080 with --sagemaker)."),
    sagemaker: bool = typer.Option(False, "--sagemaker", help="The SageMaker inference container contract: GET /ping, POST /invocations, GET /execution-parameters."),
) -> None:
    """HTTP service: POST /v1/summarize, /v1/summarize/batch; GET /healthz, /readyz, /docs; page at /."""
    extra = []
    if host:
        extra.append(f"serve.host={host}")
    if port is not None:
        extra.append(f"serve.port={port}")
    from threadsum.deps import require

    _run(require, "fastapi", "serve")
    _run(require, "uvicorn", "serve")
    if sagemaker:
        from threadsum.serve.sagemaker import serve_sagemaker

        _run(serve_sagemaker, config, (overrides or []) + extra, model)
        return
    if model is None:
        from threadsum.errors import ConfigError

        def need_model() -> None:
            raise ConfigError("--model is required: pass the model folder to serve (e.g. --model models/bart-email)")

        _run(need_model)
    cfg = _load(config, (overrides or []) + extra)
    from threadsum.serve.app import serve as serve_fn

    _run(serve_fn, cfg, str(model), overrides or [])


@app.command()
def plan(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    device: str = typer.Option("auto", "--device", "-d", help="GPU name (t4, v100-16, v100-32, a10g, l4, a100-40, a100-80, h100, h200), cpu, cpu:<GB>, or auto (this machine)."),
    cost: bool = typer.Option(False, "--cost", help="Also estimate epoch time and money per SageMaker instance type (on-demand and spot)."),
    ranks: int = typer.Option(1, "--ranks", help="FSDP ranks the model state is sharded over."),
    offload: bool = typer.Option(False, "--offload", help="FSDP CPU offload of parameters and optimizer state."),
    calibrate: bool = typer.Option(False, "--calibrate", help="First measure this machine's CPU training rate for the config's model and precision (a few real steps on random weights, under 2 minutes) and store it for --cost."),
    calibrate_seconds: float = typer.Option(100.0, "--calibrate-seconds", min=1.0, help="Seconds of timed steps --calibrate aims at (model build and one warm-up step come on top)."),
) -> None:
    """Predict peak memory (with breakdown), the options that fit a device, and time/cost per epoch."""
    cfg = _load(config, overrides)
    from threadsum.train.cost import plan_command

    if calibrate:
        from threadsum.train.calibrate import calibrate as calibrate_fn
        from threadsum.train.calibrate import describe

        entry = _run(calibrate_fn, cfg, calibrate_seconds, say=console.print)
        console.print(f"calibrated: {describe(entry)}; stored in {entry['stored_in']} ({entry['seconds']:.0f} s)")
    _run(plan_command, cfg, device=device, cost=cost, ranks=ranks, cpu_offload=offload)


@runs_app.callback()
def runs_list(
    ctx: typer.Context,
    root: Path = typer.Option(Path("outputs"), "--root", help="Folder searched for run records (run.json)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Also list runs from this MLflow URI."),
) -> None:
    """List runs: id, model, device, status, steps, time per epoch, peak memory, ROUGE-L, cost."""
    if ctx.invoked_subcommand is not None:
        return
    from threadsum.runs import runs_command

    _run(runs_command, root, tracking_uri)


@runs_app.command("report")
def runs_report(
    root: Path = typer.Option(Path("outputs"), "--root", help="Folder searched for run records (run.json)."),
    output: Path = typer.Option(Path("EXPERIMENTS.md"), "--output", "-o", help="Markdown file to write."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Also include runs from this MLflow URI."),
) -> None:
    """Write a markdown experiment log, with a 'failed approaches' section."""
    from threadsum.runs import runs_report_command

    _run(runs_report_command, root, output, tracking_uri)


@runs_app.command("compare")
def runs_compare(
    run_dirs: List[Path] = typer.Argument(..., help="Training output folders (train.output_dir), each evaluated with `threadsum evaluate`; the first is the reference."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for compare.md, compare.json and compare.png (default: compare-<split> beside the first run)."),
    split: str = typer.Option("test", "--split", help="The evaluated split to compare (the runs' eval-<split> folders)."),
    instance: str = typer.Option("ml.g5.xlarge", "--instance", help="SageMaker instance type of the planner's $ per epoch."),
    latency_threads: int = typer.Option(8, "--latency-threads", help="Threads timed per run for batch-1 latency and throughput on this machine (0: skip)."),
) -> None:
    """Compare runs evaluated on the same test threads: ROUGE with CIs, paired bootstrap, grounding, cost, speed."""
    from threadsum.evaluate.compare import compare_command

    _run(compare_command, run_dirs, out, split=split, instance=instance, latency_threads=latency_threads)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Folder for every output of the demo."),
    threads: int = typer.Option(0, "--threads", help="Synthetic threads to generate (0: the demo default)."),
    family: str = typer.Option("seq2seq", "--family",
                               help="seq2seq: a tiny BART; causal: a tiny decoder-only Llama with a chat template."),
    overrides: Optional[List[str]] = OverridesArg,
) -> None:
    """Offline end to end on CPU: synthetic corpus -> prepare -> train tiny model -> evaluate -> summarize."""
    from threadsum.demo import run_demo

    raise typer.Exit(_run(run_demo, out_dir, threads=threads or None, overrides=overrides or [], family=family) or 0)


def _mount_sagemaker() -> None:
    try:
        from threadsum.cloud.cli import app as sagemaker_app
    except ImportError:
        return
    app.add_typer(sagemaker_app, name="sagemaker", help="SageMaker training jobs, endpoints (package, deploy, invoke, undeploy) and Batch Transform.")


_mount_sagemaker()


def main() -> None:
    """Console entry point of ``threadsum`` (``[project.scripts]`` in pyproject.toml and ``python -m threadsum``).

    Runs the Typer app; it ends the process with ``SystemExit`` carrying the exit code of
    :class:`threadsum.errors.ExitCode` (0 success, 2 bad config or input, 3 OOM, 4 diverged,
    75 preempted, 130 aborted). Commands turn a :class:`~threadsum.errors.ThreadsumError` into one
    line and its code (``_run``); any other exception shows its traceback and exits 1.
    """
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
