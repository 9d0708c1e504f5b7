"""`threadsum sagemaker ...`: training jobs (launch, status, logs, stop, fetch) and inference (package, deploy, invoke, undeploy, transform).

Mounted by threadsum.cli with ``app.add_typer(cloud_cli.app, name="sagemaker")``. Thin: every
command calls one function of :mod:`threadsum.cloud.sagemaker` (training) or
:mod:`threadsum.cloud.deploy` (inference).
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
    help="SageMaker training jobs, endpoints and Batch Transform (needs: pip install 'threadsum[sagemaker]').",
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


# ------------------------------------------------------------------------------ inference
def _print_requests(pairs) -> None:
    # stdout carries only the requests, one JSON object per call, in the order they are sent
    from threadsum.cloud.sagemaker import redact

    for op, req in pairs:
        typer.echo(redact(json.dumps({"operation": op, "request": req}, indent=2, default=str)))


@app.command("package")
def package_command(
    model_dir: Path = typer.Argument(..., help="Model folder (`threadsum train` or `threadsum export` output)."),
    out: Path = typer.Option(Path("model.tar.gz"), "--out", "-o", help="Archive to write."),
) -> None:
    """Write model.tar.gz for SageMaker hosting: weights, tokenizer, config, code/ (inference.py, serve, requirements.txt, threadsum)."""
    from threadsum.cloud import deploy

    try:
        info = deploy.package(model_dir, out)
    except _errors() as exc:
        _fail(exc)
    typer.echo(f"{info['archive']}: {info['files']} files, {info['bytes'] / 1e6:.1f} MB before compression")


@app.command("deploy")
def deploy_command(
    model: str = typer.Argument(..., help="Model folder, model.tar.gz, or s3://.../model.tar.gz."),
    name: str = typer.Option(..., "--name", help="Endpoint name; the model and endpoint config get <name>-<UTC time>."),
    role: Optional[str] = typer.Option(None, "--role", help="IAM role ARN SageMaker runs the model as."),
    s3_prefix: Optional[str] = typer.Option(None, "--s3-prefix", help="s3://bucket/prefix for model.tar.gz."),
    region: Optional[str] = typer.Option(None, "--region"),
    instance_type: str = typer.Option("ml.g5.xlarge", "--instance-type", help="Real-time instance type."),
    instance_count: int = typer.Option(1, "--instance-count", min=1),
    serverless: bool = typer.Option(False, "--serverless", help="Serverless endpoint (CPU)."),
    memory_mb: int = typer.Option(4096, "--memory-mb", help="Serverless memory: 1024-6144 in steps of 1024."),
    max_concurrency: int = typer.Option(5, "--max-concurrency", help="Serverless concurrent invocations (1-200)."),
    asynchronous: bool = typer.Option(False, "--async", help="Asynchronous endpoint; results go to --output-s3."),
    output_s3: Optional[str] = typer.Option(None, "--output-s3", help="s3://... for asynchronous results."),
    image: Optional[str] = typer.Option(None, "--image", help="Image URI (default: the AWS PyTorch inference image)."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="section.key=value for the container (THREADSUM_OVERRIDES)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the endpoint is InService."),
    keep_previous: bool = typer.Option(False, "--keep-previous", help="After an update, keep the previous config and model (to roll back)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the requests as JSON; upload and change nothing (reads the endpoint when credentials work)."),
) -> None:
    """Deploy a model to a SageMaker endpoint (real-time, serverless or asynchronous); an existing endpoint is updated blue/green."""
    from threadsum.cloud import deploy
    from threadsum.cloud.sagemaker import LaunchValidationError

    try:
        if asynchronous and not output_s3:
            raise LaunchValidationError("--async needs --output-s3 s3://<bucket>/<prefix> for the results")
        result = deploy.deploy(model, name=name, role=role, s3_prefix=s3_prefix, region=region,
                               instance_type=instance_type, instance_count=instance_count, serverless=serverless,
                               memory_mb=memory_mb, max_concurrency=max_concurrency,
                               async_output=output_s3 if asynchronous else None, image=image,
                               overrides=sets or [], wait=wait, keep_previous=keep_previous, dry_run=dry_run)
    except _errors() as exc:
        _fail(exc)
    if dry_run:
        for up in result["uploads"]:
            typer.echo(f"would upload {up['local']} -> {up['s3']}", err=True)
        if result["assumption"]:
            typer.echo(f"note: {result['assumption']}", err=True)
        if result["after_update"]:
            typer.echo(f"the last {len(result['after_update'])} requests are sent once the update is InService "
                       "(the previous config and models, tagged for this endpoint)", err=True)
        _print_kept(result["kept"])
        _print_requests([*result["requests"], *result["after_update"]])
        return
    verb = "created" if result["action"] == "create" else "updated"
    typer.echo(f"endpoint: {result['name']} ({result['status']}), {verb}; model and config {result['model_name']}")
    for op, req in result["deleted"]:
        typer.echo(f"deleted the previous {'endpoint config' if op == 'DeleteEndpointConfig' else 'model'} "
                   f"{next(iter(req.values()))}")
    if result["after_update"] and not result["deleted"]:
        typer.echo(f"kept the previous config and model; `threadsum sagemaker undeploy {result['name']}` removes "
                   "every one tagged for the endpoint")
    _print_kept(result["kept"])
    typer.echo(f"invoke: threadsum sagemaker invoke {result['name']} --file thread.json")


def _print_kept(kept) -> None:
    for what in kept:
        typer.echo(f"kept {what}: it is not tagged threadsum:endpoint for this endpoint (not made by deploy)", err=True)


@app.command("invoke")
def invoke_command(
    name: str = typer.Argument(..., help="Endpoint name."),
    file: Path = typer.Option(..., "--file", "-f", help="A JSON thread, {\"threads\": [...]}, or a .jsonl file."),
    region: Optional[str] = typer.Option(None, "--region"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the request; call nothing."),
) -> None:
    """Send a request to an endpoint and print the answer."""
    from threadsum.cloud import deploy, hosting
    from threadsum.cloud.sagemaker import SageMakerError

    try:
        if not file.is_file():
            raise SageMakerError(f"--file '{file}' does not exist; pass a JSON or JSON Lines file")
        ctype = hosting.JSONLINES if file.suffix in (".jsonl", ".jsonlines", ".ndjson") else hosting.JSON
        result = deploy.invoke(name, file.read_bytes(), content_type=ctype, region=region, dry_run=dry_run)
    except _errors() as exc:
        _fail(exc)
    if dry_run:
        _print_requests([("InvokeEndpoint", result["request"])])
        return
    typer.echo(result["body"].decode("utf-8", "replace"))


@app.command("undeploy")
def undeploy_command(
    name: str = typer.Argument(..., help="Endpoint name."),
    region: Optional[str] = typer.Option(None, "--region"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the delete requests; call nothing."),
) -> None:
    """Delete an endpoint and every endpoint config and model of it (current, and tagged by earlier deploys)."""
    from threadsum.cloud import deploy

    try:
        result = deploy.undeploy(name, region=region, dry_run=dry_run)
    except _errors() as exc:
        _fail(exc)
    if dry_run:
        if result["assumption"]:
            typer.echo(f"note: {result['assumption']}", err=True)
        _print_requests(result["requests"])
        return
    for op, req in result["requests"]:
        typer.echo(f"{op}: {next(iter(req.values()))}")


@app.command("transform")
def transform_command(
    model: str = typer.Argument(..., help="Model folder, model.tar.gz or s3:// archive (a model is created), or a SageMaker model or endpoint name."),
    input_s3: str = typer.Option(..., "--input-s3", help="s3://... prefix of JSON Lines files (one thread a line)."),
    output_s3: str = typer.Option(..., "--output-s3", help="s3://... for the results (<path under input>.out)."),
    job: Optional[str] = typer.Option(None, "--job-name", help="Default: <model>-transform-<UTC time>."),
    role: Optional[str] = typer.Option(None, "--role", help="IAM role ARN, to create a model from a folder or archive."),
    s3_prefix: Optional[str] = typer.Option(None, "--s3-prefix", help="s3://bucket/prefix for a local model's archive."),
    image: Optional[str] = typer.Option(None, "--image", help="Image URI for a created model (default: the AWS PyTorch inference image)."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="section.key=value for a created model's container."),
    instance_type: str = typer.Option("ml.g5.xlarge", "--instance-type"),
    instance_count: int = typer.Option(1, "--instance-count", min=1),
    max_payload_mb: int = typer.Option(6, "--max-payload-mb", help="MB of lines per request (1-100)."),
    to: Optional[Path] = typer.Option(None, "--to", help="Folder to download the results into (line counts checked)."),
    region: Optional[str] = typer.Option(None, "--region"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the requests; change nothing."),
) -> None:
    """Batch Transform over JSON Lines in S3 (SplitType Line, AssembleWith Line); fetch and check the results."""
    from threadsum.cloud import deploy
    from threadsum.cloud.sagemaker import stamped_name

    label = Path(model.rstrip("/")).name.removesuffix(".tar.gz") if deploy.is_model_source(model) else model
    job = job or stamped_name(f"{label}-transform")
    try:
        result = deploy.transform(model, input_s3, output_s3, job=job, role=role, s3_prefix=s3_prefix, image=image,
                                  overrides=sets or [], instance_type=instance_type, instance_count=instance_count,
                                  max_payload_mb=max_payload_mb, region=region, to=to, dry_run=dry_run)
    except _errors() as exc:
        _fail(exc)
    if dry_run:
        for up in result["uploads"]:
            typer.echo(f"would upload {up['local']} -> {up['s3']}", err=True)
        if result["assumption"]:
            typer.echo(f"note: {result['assumption']}", err=True)
        _print_requests(result["requests"])
        return
    typer.echo(f"transform job {job}: {result['status']}; {len(result['files'])} result files, {result['lines']} lines")
    for f in result["files"]:
        typer.echo(f)
