"""`threadsum sagemaker ...`: launch, status, logs, stop and fetch SageMaker training jobs.

Mounted by threadsum.cli with ``app.add_typer(cloud_cli.app, name="sagemaker")``. Thin: every
command calls one function of :mod:`threadsum.cloud.sagemaker`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from threadsum.errors import ThreadsumError

app = typer.Typer(
    name="sagemaker",
    help="Run training as AWS SageMaker training jobs (needs: pip install 'threadsum[sagemaker]').",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(exc: ThreadsumError) -> None:
    from threadsum.cloud.sagemaker import redact

    typer.echo(f"error: {redact(str(exc))}", err=True)
    raise typer.Exit(int(exc.exit_code))


def _errors():
    return ThreadsumError


@app.command("launch")
def launch_command(
    config: Path = typer.Option(..., "--config", "-c", help="The same YAML config a local run uses."),
    overrides: Optional[List[str]] = typer.Argument(None, help="section.key=value overrides."),
    instance_type: Optional[str] = typer.Option(None, "--instance-type", help="e.g. ml.g5.2xlarge (default: sagemaker.instance_type, the planner, or ml.g5.2xlarge)."),
    instance_count: Optional[int] = typer.Option(None, "--instance-count", min=1, help="Instances; torchrun spans them."),
    spot: Optional[bool] = typer.Option(None, "--spot/--no-spot", help="Managed spot training (resumes from checkpoints)."),
    role: Optional[str] = typer.Option(None, "--role", help="IAM role ARN the job runs as."),
    s3_prefix: Optional[str] = typer.Option(None, "--s3-prefix", help="s3://bucket/prefix for data, code, checkpoints, model."),
    region: Optional[str] = typer.Option(None, "--region", help="AWS region (default: sagemaker.region or your AWS config)."),
    job_name: Optional[str] = typer.Option(None, "--job-name", help="Default: threadsum-<config name>-<UTC time>."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the CreateTrainingJob request as JSON; upload and call nothing."),
) -> None:
    """Upload the data and this package to S3 and create a training job running `threadsum train`."""
    from threadsum.cloud import sagemaker
    from threadsum.config import load_config

    try:
        cfg = load_config(config, overrides or [])
        result = sagemaker.launch(
            cfg, instance_type=instance_type, instance_count=instance_count, spot=spot, role=role,
            s3_prefix=s3_prefix, region=region, dry_run=dry_run, job_name=job_name, config_path=config,
        )
    except _errors() as exc:
        _fail(exc)
    if dry_run:
        for up in result["uploads"]:
            typer.echo(f"would upload {up['local']} -> {up['s3']}", err=True)
        typer.echo(f"instance type from: {result['instance_source']}", err=True)
        # stdout carries only the request: `aws sagemaker create-training-job --cli-input-json` takes it as is
        typer.echo(sagemaker.redact(json.dumps(result["request"], indent=2)))
        return
    typer.echo(f"job: {result['job_name']}\narn: {result.get('arn')}")
    typer.echo(f"watch: threadsum sagemaker logs {result['job_name']} --follow")
    typer.echo(f"fetch: threadsum sagemaker fetch {result['job_name']} --to models/{result['job_name']}")


@app.command("status")
def status_command(
    job: str = typer.Argument(..., help="Training job name."),
    region: Optional[str] = typer.Option(None, "--region"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Show a job's state, timings, spot savings and model location."""
    from threadsum.cloud import sagemaker

    try:
        info = sagemaker.status(job, region=region)
    except _errors() as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        if value is not None:
            typer.echo(f"{key:<{width}}  {value}")


@app.command("logs")
def logs_command(
    job: str = typer.Argument(..., help="Training job name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends."),
    region: Optional[str] = typer.Option(None, "--region"),
) -> None:
    """Print the job's CloudWatch log (all hosts)."""
    from threadsum.cloud import sagemaker

    try:
        n = sagemaker.logs(job, follow=follow, region=region, out=sys.stdout)
    except _errors() as exc:
        _fail(exc)
    if n == 0:
        typer.echo(f"no log lines yet for {job} (the job may still be starting)", err=True)


@app.command("stop")
def stop_command(
    job: str = typer.Argument(..., help="Training job name."),
    region: Optional[str] = typer.Option(None, "--region"),
) -> None:
    """Stop a running job (its latest checkpoint stays in S3)."""
    from threadsum.cloud import sagemaker

    try:
        sagemaker.stop(job, region=region)
    except _errors() as exc:
        _fail(exc)
    typer.echo(f"stop requested for {job}")


@app.command("fetch")
def fetch_command(
    job: str = typer.Argument(..., help="Training job name."),
    to: Path = typer.Option(..., "--to", help="Empty or new folder for the model."),
    region: Optional[str] = typer.Option(None, "--region"),
) -> None:
    """Download the finished model and unpack it where `summarize`/`serve` can load it."""
    from threadsum.cloud import sagemaker

    try:
        info = sagemaker.fetch(job, to, region=region)
    except _errors() as exc:
        _fail(exc)
    typer.echo(f"model: {info['model_dir']} ({info['files']} files from {info['model_artifacts']})")
    if not info["loadable"]:
        typer.echo("warning: no config.json found; this archive is not a Hugging Face model folder", err=True)
