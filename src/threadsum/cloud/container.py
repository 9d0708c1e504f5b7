"""The SageMaker training-container contract: what `threadsum train` does inside a training job.

SageMaker describes a job to the container in two ways: ``SM_*`` environment variables (set by the
SageMaker training toolkit that the AWS Deep Learning Containers run) and the files under
``/opt/ml/input/config/`` (always present). This module reads either, with the files as fallback,
and turns them into ordinary config overrides:

    data.prepared_dir          the ``prepared`` channel (or ``data.source`` from the ``raw`` channel)
    train.output_dir           /opt/ml/checkpoints (SageMaker syncs it to the job's checkpoint S3 URI,
                               and downloads it again when a spot job restarts)
    train.resume               auto, so a restarted job continues from the newest checkpoint
    train.checkpoint_every_minutes
                               on (sagemaker.checkpoint_every_minutes), because SIGTERM does not reach
                               the script in every container and a spot reclaim gives two minutes

After training, :func:`export_model` copies ``<output_dir>/model/`` to ``SM_MODEL_DIR`` (SageMaker
packs it as ``model.tar.gz``) and the run record to ``SM_OUTPUT_DATA_DIR``.

:func:`main` is the job's entry point (``threadsum_entry.py`` in the uploaded source bundle calls
it): it resolves the config, runs ``threadsum prepare`` when only raw data was sent, then
``threadsum train`` (under torchrun when the job has several GPUs or instances), then exports.
Every child is started with an argument list, never through a shell.

No AWS SDK is imported here: this runs inside the training code path.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from threadsum.errors import UserError

#: Root of the SageMaker tree; tests point it at a temporary folder.
ROOT_ENV = "THREADSUM_SM_ROOT"
DEFAULT_ROOT = "/opt/ml"

#: Channel names the launcher uses.
CHANNEL_PREPARED = "prepared"
CHANNEL_RAW = "raw"

#: Hyperparameter keys the launcher sets (values are strings; the toolkit may JSON-decode them).
HP_CONFIG = "config"
HP_RAW_NAME = "raw_source_name"
HP_CHECKPOINT_MINUTES = "checkpoint_every_minutes"
HP_DISTRIBUTION = "distribution"
HP_NPROC = "nproc_per_node"

DEFAULT_CHECKPOINT_MINUTES = 10.0
TORCHRUN_PORT = 29500


class ContainerError(UserError):
    """The SageMaker environment is missing something the job needs; the message says what."""


@dataclass
class SageMakerEnv:
    """What SageMaker told this container about the job."""

    root: Path
    hyperparameters: dict[str, str]
    channels: dict[str, Path]
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    hosts: list[str]
    current_host: str
    num_gpus: Optional[int]
    network_interface: Optional[str] = None
    job_name: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_leader(self) -> bool:
        """True on the first host of ``hosts`` (or when no hosts are listed): the host that exports."""
        return not self.hosts or self.current_host == self.hosts[0]

    @property
    def node_rank(self) -> int:
        """Index of this host in ``hosts`` (torchrun's ``--node_rank``); 0 when it is not listed."""
        return self.hosts.index(self.current_host) if self.current_host in self.hosts else 0


def sm_root(environ: Mapping[str, str] | None = None) -> Path:
    """Root of the SageMaker tree: ``$THREADSUM_SM_ROOT`` when set (tests), else ``/opt/ml``."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(ROOT_ENV) or DEFAULT_ROOT)


def in_sagemaker(environ: Mapping[str, str] | None = None) -> bool:
    """True inside a SageMaker training container (toolkit variables or the /opt/ml config files)."""
    environ = os.environ if environ is None else environ
    if any(k in environ for k in ("SM_TRAINING_ENV", "SM_MODEL_DIR", "SM_HPS", "TRAINING_JOB_NAME")):
        return True
    return (sm_root(environ) / "input" / "config" / "resourceconfig.json").is_file()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ContainerError(f"'{path}' is not valid JSON ({exc}); the SageMaker job description is damaged") from exc


def _json_env(environ: Mapping[str, str], key: str) -> Any:
    raw = environ.get(key)
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ContainerError(f"environment variable {key} is not valid JSON: {exc}") from exc


def _hp_str(value: Any) -> str:
    # The toolkit JSON-decodes hyperparameters (SM_HPS holds numbers and bools); the config file
    # holds the raw strings. Normalize both to the string the launcher wrote.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_env(environ: Mapping[str, str] | None = None) -> SageMakerEnv:
    """Read the job description from SM_* variables, falling back to /opt/ml/input/config/*.json.

    Hyperparameter values are normalized to the strings the launcher wrote (the toolkit's ``SM_HPS``
    holds JSON-decoded numbers and bools). Channel folders default to ``<root>/input/data/<name>``;
    the current host to the first listed host, else 'algo-1'.

    Raises:
        ContainerError: a JSON variable (``SM_HPS``, ``SM_CHANNELS``, ``SM_HOSTS``) or config file is
            not valid JSON, or the hyperparameters are not a JSON object.
        ValueError: ``SM_NUM_GPUS`` is not an integer.
    """
    environ = os.environ if environ is None else environ
    root = sm_root(environ)
    config_dir = root / "input" / "config"

    hps = _json_env(environ, "SM_HPS")
    if hps is None:
        hps = _read_json(config_dir / "hyperparameters.json") or {}
    if not isinstance(hps, dict):
        raise ContainerError("hyperparameters must be a JSON object (SM_HPS or hyperparameters.json)")
    hyperparameters = {str(k): _hp_str(v) for k, v in hps.items()}

    channels: dict[str, Path] = {}
    names = _json_env(environ, "SM_CHANNELS")
    if names is None:
        names = list((_read_json(config_dir / "inputdataconfig.json") or {}).keys())
    for name in names:
        env_path = environ.get(f"SM_CHANNEL_{name.upper()}")
        channels[name] = Path(env_path) if env_path else root / "input" / "data" / name

    resource = _read_json(config_dir / "resourceconfig.json") or {}
    hosts = _json_env(environ, "SM_HOSTS") or resource.get("hosts") or []
    current = environ.get("SM_CURRENT_HOST") or resource.get("current_host") or (hosts[0] if hosts else "algo-1")
    gpus_raw = environ.get("SM_NUM_GPUS")
    num_gpus = int(gpus_raw) if gpus_raw not in (None, "") else None

    return SageMakerEnv(
        root=root,
        hyperparameters=hyperparameters,
        channels=channels,
        model_dir=Path(environ.get("SM_MODEL_DIR") or root / "model"),
        output_data_dir=Path(environ.get("SM_OUTPUT_DATA_DIR") or root / "output" / "data"),
        checkpoint_dir=root / "checkpoints",
        hosts=list(hosts),
        current_host=current,
        num_gpus=num_gpus,
        network_interface=environ.get("SM_NETWORK_INTERFACE_NAME") or resource.get("network_interface_name"),
        job_name=environ.get("TRAINING_JOB_NAME"),
    )


def _data_overrides(env: SageMakerEnv) -> list[str]:
    prepared = env.channels.get(CHANNEL_PREPARED)
    if prepared is not None:
        return [f"data.prepared_dir={prepared}"]
    raw = env.channels.get(CHANNEL_RAW)
    if raw is not None:
        name = env.hyperparameters.get(HP_RAW_NAME, "")
        source = raw / name if name else raw
        # prepare writes next to the job's scratch space, not into the read-only channel
        return [f"data.source={source}", "data.kaggle=false", f"data.prepared_dir={env.root / 'threadsum' / 'prepared'}"]
    raise ContainerError(
        f"the job has no '{CHANNEL_PREPARED}' or '{CHANNEL_RAW}' input channel (channels: {sorted(env.channels) or 'none'}); "
        "launch it with `threadsum sagemaker launch`, which uploads the prepared dataset (or data.source)"
    )


def sagemaker_overrides(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """Config overrides for a run inside a SageMaker training job; None outside one.

    Returns:
        ``section.key=value`` texts: the data channel (``data.prepared_dir``, or ``data.source`` from
        the raw channel), ``train.output_dir=<root>/checkpoints``, ``train.resume=auto`` and
        ``train.checkpoint_every_minutes`` (minutes; hyperparameter, default 10).

    Raises:
        ContainerError: the job has neither a 'prepared' nor a 'raw' channel, the checkpoint
            interval is not a number, or the job description is not valid JSON.
    """
    environ = os.environ if environ is None else environ
    if not in_sagemaker(environ):
        return None
    env = read_env(environ)
    minutes = env.hyperparameters.get(HP_CHECKPOINT_MINUTES) or DEFAULT_CHECKPOINT_MINUTES
    try:
        minutes = float(minutes)
    except ValueError:
        raise ContainerError(f"hyperparameter '{HP_CHECKPOINT_MINUTES}' must be a number, got '{minutes}'") from None
    return [
        *_data_overrides(env),
        f"train.output_dir={env.checkpoint_dir}",
        "train.resume=auto",
        f"train.checkpoint_every_minutes={minutes:g}",
    ]


def export_model(output_dir: str | Path, environ: Mapping[str, str] | None = None) -> Optional[Path]:
    """Copy the finished model to SM_MODEL_DIR and the run record to SM_OUTPUT_DATA_DIR (leader only).

    Returns the model dir written, or None on the other hosts of a multi-instance job (SageMaker
    packs the model dir of every host into one archive, so only one host writes it).

    Raises:
        ContainerError: ``<output_dir>/model/config.json`` is missing (training wrote no model), or
            the job description is not valid JSON.
    """
    env = read_env(environ)
    if not env.is_leader:
        return None
    src = Path(output_dir) / "model"
    if not (src / "config.json").is_file():
        raise ContainerError(f"training finished without a model in '{src}' (no config.json); see the log above")
    env.model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, env.model_dir, dirs_exist_ok=True)
    env.output_data_dir.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "run.json", "config.yaml"):
        f = Path(output_dir) / name
        if f.is_file():
            shutil.copy2(f, env.output_data_dir / name)
    return env.model_dir


# ------------------------------------------------------------------------------ entry point
def _nproc_per_node(env: SageMakerEnv) -> int:
    wanted = env.hyperparameters.get(HP_NPROC, "auto")
    if wanted not in ("", "auto"):
        return max(1, int(wanted))
    return max(1, env.num_gpus or 0)


def train_command(env: SageMakerEnv, config_path: Path) -> list[str]:
    """The argv of `threadsum train`, under torchrun when the job has more than one process.

    Processes per node: the ``nproc_per_node`` hyperparameter, else one per GPU (``SM_NUM_GPUS``);
    nodes: the job's hosts. Hyperparameter ``distribution=none`` forces a single process. The
    rendezvous is the first host on port 29500.

    Raises:
        ValueError: ``nproc_per_node`` is neither 'auto' nor an integer.
    """
    distribution = env.hyperparameters.get(HP_DISTRIBUTION, "auto")
    nproc = _nproc_per_node(env)
    nnodes = max(1, len(env.hosts))
    cli = ["-m", "threadsum", "train", "--config", str(config_path)]
    if distribution == "none" or nproc * nnodes == 1:
        return [sys.executable, *cli]
    master = env.hosts[0] if env.hosts else "localhost"
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={nnodes}", f"--node_rank={env.node_rank}", f"--nproc_per_node={nproc}",
        f"--master_addr={master}", f"--master_port={TORCHRUN_PORT}",
        *cli,
    ]


def _write_failure(env: SageMakerEnv, message: str) -> None:
    # SageMaker shows the first 1 KB of /opt/ml/output/failure as the job's FailureReason
    try:
        path = env.root / "output" / "failure"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message[:1000])
    except OSError:
        pass


def _run(cmd: list[str], child_env: dict[str, str], env: SageMakerEnv, what: str) -> None:
    print(f"[threadsum] {what}: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, env=child_env)
    # SageMaker (stop, spot reclaim) signals this process only: pass SIGTERM/SIGINT on so the
    # training loop can finish its step and checkpoint instead of being cut off
    forwarded: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def forward(signum, _frame):
            if proc.poll() is None:
                proc.send_signal(signum)
        for sig in (signal.SIGTERM, signal.SIGINT):
            forwarded[sig] = signal.signal(sig, forward)
    try:
        rc = proc.wait()
    finally:
        for sig, old in forwarded.items():
            signal.signal(sig, old)
    if rc != 0:
        msg = f"`threadsum {what}` exited with status {rc}; see the CloudWatch log of this job"
        _write_failure(env, msg)
        raise SystemExit(rc)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of a SageMaker training job (hyperparameters arrive as data, argv is ignored).

    Resolves the config of the source bundle with :func:`sagemaker_overrides`, runs ``threadsum
    prepare`` when only the raw channel was sent, ``threadsum train`` (see :func:`train_command`),
    then :func:`export_model`. SIGTERM/SIGINT are forwarded to the child so it can checkpoint.

    Returns:
        0 on success.

    Raises:
        ContainerError: not inside a SageMaker job, the config file is not in the bundle, or the
            job description is incomplete (see :func:`sagemaker_overrides`, :func:`export_model`).
        ConfigError: the config or an override does not validate.
        SystemExit: a child command failed; carries its exit status (also written to
            ``<root>/output/failure``, SageMaker's FailureReason).
    """
    from threadsum.config import load_config

    environ = dict(os.environ if environ is None else environ)
    if not in_sagemaker(environ):
        raise ContainerError(
            "not inside a SageMaker training job (no SM_* variables and no /opt/ml/input/config); "
            f"to simulate one set {ROOT_ENV} to a folder laid out like /opt/ml"
        )
    env = read_env(environ)
    code_dir = Path(__file__).resolve().parents[2]  # the folder holding the threadsum package
    config_name = env.hyperparameters.get(HP_CONFIG, "config.yaml")
    config_path = Path(config_name) if Path(config_name).is_absolute() else code_dir / config_name
    if not config_path.is_file():
        _write_failure(env, f"config file '{config_path}' not found in the source bundle")
        raise ContainerError(f"config file '{config_path}' not found; the source bundle is incomplete")

    overrides = sagemaker_overrides(environ) or []
    cfg = load_config(config_path, overrides)
    # one resolved file for prepare, train and every torchrun worker: all read the same settings
    resolved = cfg.save(env.root / "threadsum", "config.yaml")
    print(f"[threadsum] job config: {config_path} + {overrides}", flush=True)

    child_env = dict(environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code_dir), environ.get("PYTHONPATH", "")) if p)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    if env.network_interface:
        child_env.setdefault("NCCL_SOCKET_IFNAME", env.network_interface)

    if CHANNEL_PREPARED not in env.channels:
        _run([sys.executable, "-m", "threadsum", "prepare", "--config", str(resolved)], child_env, env, "prepare")
    _run(train_command(env, resolved), child_env, env, "train")
    model_dir = export_model(cfg.train.output_dir, environ)
    if model_dir is not None:
        print(f"[threadsum] model written to {model_dir}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    sys.exit(main(sys.argv[1:]))
