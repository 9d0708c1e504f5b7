"""``train.compile``: torch.compile of the training forward with a bounded number of compilations.

The token-budget sampler makes batches of every shape ``[batch, src_len] x [batch, tgt_len]``; a
compiler that specialises on shapes would compile for each. So lengths are padded to a short ladder
of buckets (:class:`threadsum.train.batching.PadRule`, ``train.pad_buckets``) and the batch dimension
is marked dynamic: at most one graph per (source bucket, target bucket) pair. Automatic dynamic
shapes are turned off so the lengths stay static (static lengths compile to faster kernels; a fully
dynamic graph was slower in the H200 measurements, DESIGN notes). The number of graphs compiled so far
is logged as ``compiled_graphs`` in metrics.jsonl.

The module is compiled in place with ``nn.Module.compile`` so parameter names, ``state_dict`` keys and
therefore checkpoints and exports are the same as without compilation.
"""
from __future__ import annotations

from typing import Any

from threadsum.config import TrainConfig
from threadsum.train.batching import PadRule

DEFAULT_BUCKETS = (64, 128, 256, 512, 768, 1024)
"""Bucket ladder (tokens) when ``train.compile`` is on and ``train.pad_buckets`` is empty: BART's
1,024-token window in 6 steps; worst-case padding 2x (a 65-token summary padded to 128), typically
far less because the sampler groups similar lengths."""


def pad_rule(tc: TrainConfig) -> PadRule:
    """The padding of every training and validation batch for ``tc`` (see ``train.pad_buckets``)."""
    buckets = tuple(sorted(tc.pad_buckets)) or (DEFAULT_BUCKETS if tc.compile else ())
    return PadRule(tc.pad_to_multiple_of, buckets)


def compile_model(model: Any, target: Any, tc: TrainConfig) -> None:
    """Compile ``target`` (the module the training step calls: the whole model, or its encoder-decoder
    body under the chunked loss) in place with ``train.compile_backend``.

    Raises:
        ConfigError: torch has no ``nn.Module.compile`` (torch < 2.2), or an unknown backend.
    """
    import torch
    import torch._dynamo

    from threadsum.errors import ConfigError

    if not hasattr(target, "compile"):
        raise ConfigError("train.compile=true needs torch >= 2.2 (nn.Module.compile); set train.compile=false")
    backends = torch._dynamo.list_backends(exclude_tags=())
    if tc.compile_backend not in backends:
        raise ConfigError(f"train.compile_backend={tc.compile_backend!r} is not a torch.compile backend here; "
                          f"use inductor (or aot_eager to check tracing only); available: {', '.join(backends)}")
    rule = pad_rule(tc)
    graphs = (len(rule.buckets) or 8) ** 2 + 8
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, graphs)
    target.compile(backend=tc.compile_backend)


def mark_batch_dynamic(*tensors: Any) -> None:
    """Mark dimension 0 (batch) of each tensor dynamic, so a new batch size does not recompile."""
    import torch._dynamo

    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)


def compiled_graphs() -> int:
    """Graphs torch.compile has produced in this process (dynamo's ``unique_graphs`` counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
