"""Archive shards on Ray Data: ``map_batches`` over an actor pool, each actor holding one engine.

One row per pending shard (its id and its pickled :class:`~threadsum.archive.work.Shard`) goes
through ``Dataset.map_batches(ShardSummarizer, batch_size=1, compute=ActorPoolStrategy(size=n))``;
each actor loads the model once (:func:`threadsum.archive.work.load_summarizer`) and runs
:func:`threadsum.archive.work.summarize_shard`, the function local mode runs, on one shard per
call, so the results equal local mode's. The rows stream back to the driver, which writes each
shard into the job folder as it arrives: the folder lives on the driver's machine and the workers
need no shared storage for it. A shard is a bounded batch (``--shard-size`` threads).

Where Ray runs (``--ray``): ``local`` starts a Ray instance on this machine with the cores this
process may use; ``auto`` joins the cluster Ray finds (``RAY_ADDRESS``, or one started with
``ray start`` on this machine); any other value is a cluster address (``ray://head:10001`` or
``head:6379``). On a cluster the driver's threadsum package is shipped to the workers
(``runtime_env`` ``py_modules``); its dependencies and the model folder, at the same path, must be
on every node (docs/archive.md).
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Callable, Optional

from threadsum.archive.sources import ArchiveError
from threadsum.archive.work import Shard, load_summarizer, summarize_shard
from threadsum.deps import require
from threadsum.inference.engine import usable_cores

log = logging.getLogger("threadsum.archive")

DEFAULT_CPUS_PER_ACTOR = 4
"""CPU cores per CPU actor when ``--cores`` is not given (fewer when the cluster has fewer): about
where one CPU engine's batched generation stops gaining from more threads."""

OnShard = Callable[[str, list[dict[str, Any]], list[dict[str, Any]], float, dict[str, Any]], None]


class ShardSummarizer:
    """A Ray Data actor: one Summarizer, one shard per call (``batch_size=1``)."""

    def __init__(self, model: str, config: dict[str, Any], device: str, cores: int):
        """Load the model once per actor (the expensive part, not repeated per shard)."""
        self.summarizer = load_summarizer(model, config, device, cores)
        self.engine = self.summarizer.engine.describe()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        """``{"shard": [id], "payload": [pickled Shard]}`` -> ``{"shard": [id], "result": [pickled
        (results, rejects, seconds, engine)]}``."""
        out: dict[str, list] = {"shard": [], "result": []}
        for sid, payload in zip(batch["shard"], batch["payload"]):
            shard: Shard = pickle.loads(payload)
            results, rejects, seconds = summarize_shard(self.summarizer, shard)
            out["shard"].append(str(sid))
            out["result"].append(pickle.dumps((results, rejects, seconds, self.engine)))
        return out


def _connect(where: str) -> bool:
    """Start or join Ray; True when this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if where == "local":
        ray.init(num_cpus=usable_cores(), **common)
        return True
    import threadsum

    address = None if where == "auto" else where
    try:
        ray.init(address=address or "auto", runtime_env={"py_modules": [str(Path(threadsum.__file__).parent)]},
                 **common)
    except ConnectionError as exc:
        raise ArchiveError(f"no Ray cluster at '{where}' ({exc}); start one (`ray start --head`), set RAY_ADDRESS, "
                           f"or run on this machine alone with --ray local") from None
    return True


def pool_shape(resources: dict[str, float], cores: int, actors: int, gpus_per_actor: float) -> tuple[int, float, float]:
    """``(actors, cpus per actor, gpus per actor)`` for a cluster with ``resources`` (``ray.cluster_resources()``).

    GPUs in the cluster: one GPU per actor (``gpus_per_actor`` when given), one actor per GPU, ``cores``
    CPUs each (default 1). No GPUs: ``cores`` CPUs per actor (default :data:`DEFAULT_CPUS_PER_ACTOR`, at
    most the cluster's CPUs) and as many actors as fit. ``actors`` > 0 fixes the pool size.
    """
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    if gpus_per_actor or gpus:
        per_gpu = gpus_per_actor or 1.0
        per_cpu = float(cores or 1)
        n = actors or max(1, int(gpus // per_gpu))
        return n, per_cpu, per_gpu
    per_cpu = float(cores or min(DEFAULT_CPUS_PER_ACTOR, max(1, int(cpus))))
    return actors or max(1, int(cpus // per_cpu)), per_cpu, 0.0


def run_on_ray(where: str, shards: list[Shard], model: str, config: dict[str, Any], device: str, cores: int,
               actors: int, gpus_per_actor: float, on_shard: OnShard) -> dict[str, Any]:
    """Summarize ``shards`` on Ray Data; ``on_shard(id, results, rejects, seconds, engine)`` per finished shard.

    Returns the run's Ray facts (address, pool size, CPUs and GPUs per actor) for the run log.
    Raises:
        MissingExtraError: ray is not installed (``pip install 'threadsum[ray]'``).
        ArchiveError: no cluster at the address given.
    """
    require("ray", "ray")
    import ray
    import ray.data

    started = _connect(where)
    try:
        n, per_cpu, per_gpu = pool_shape(ray.cluster_resources(), cores, actors, gpus_per_actor)
        info = {"ray": ray.__version__, "where": where, "actors": n, "cpus_per_actor": per_cpu,
                "gpus_per_actor": per_gpu, "cluster": {k: v for k, v in ray.cluster_resources().items()
                                                        if k in ("CPU", "GPU", "memory")}}
        log.info("Ray Data: %d actor(s), %g CPU and %g GPU each", n, per_cpu, per_gpu)
        if not shards:
            return info
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the job's own bar counts threads, not blocks
        rows = [{"shard": s.shard_id, "payload": pickle.dumps(s)} for s in shards]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        out = ds.map_batches(ShardSummarizer, batch_size=1, batch_format="numpy",
                             fn_constructor_kwargs={"model": model, "config": config, "device": device,
                                                    "cores": int(per_cpu) if not per_gpu else cores},
                             compute=ray.data.ActorPoolStrategy(size=n), num_cpus=per_cpu, num_gpus=per_gpu)
        for row in out.iter_rows():
            results, rejects, seconds, engine = pickle.loads(row["result"])
            on_shard(str(row["shard"]), results, rejects, seconds, engine)
        return info
    finally:
        if started:
            ray.shutdown()
