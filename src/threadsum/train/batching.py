"""Token-budget, length-bucketed batching (like fairseq's ``--max-tokens``) and collation.

A micro-batch holds as many threads as fit ``max_tokens`` *padded* tokens (source + target, each
padded to the longest member rounded up to ``pad_to_multiple_of``), so short threads travel in big
batches and long ones in small batches, and padding stays small because members have similar lengths.
The two lengths per row come from the model family (:meth:`threadsum.family.Family.budget_lengths`):
(source, target) for seq2seq, (prompt + completion, 0) for a causal model, whose batch is one padded
sequence; nothing here knows which.

Order per epoch (deterministic from ``seed`` and the epoch number, so it can be rebuilt on resume):
shuffle all indices, stable-sort them by padded length (the shuffle breaks ties randomly), cut the
sorted list into micro-batches under the budget, then shuffle the micro-batch order.

The sampler is one endless stream over epochs: an optimizer step takes ``accumulation`` micro-batches
per rank; its position is ``(epoch, cursor)`` and nothing else, so resuming mid-epoch is exact.
Rank sharding: a step consumes ``accumulation * world_size`` micro-batches and rank r takes every
world_size-th of them, so every rank runs the same number of micro-batches per optimizer step
(required by DDP, whose gradient all-reduce is collective).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

SAMPLER_EPOCH = "epoch"
SAMPLER_CURSOR = "cursor"
SAMPLER_FINGERPRINT = "fingerprint"


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (tokens)."""
    return ((n + multiple - 1) // multiple) * multiple


@dataclass(frozen=True)
class PadRule:
    """How a batch dimension's length is padded: up to the next of ``buckets`` (tokens, ascending), else
    (no buckets, or longer than the last) up to a multiple of ``multiple``.

    Buckets bound the set of shapes a batch can have, so ``torch.compile`` compiles a bounded number of
    graphs (``train.pad_buckets``); the multiple keeps shapes friendly to tensor-core tiles.
    """

    multiple: int = 8
    buckets: tuple[int, ...] = ()

    def __call__(self, n: int) -> int:
        """Padded length of a dimension whose longest member has ``n`` tokens (0 stays 0: a causal
        batch has no second dimension)."""
        if n <= 0:
            return 0
        for b in self.buckets:
            if n <= b:
                return b
        return round_up(n, self.multiple)

    def __str__(self) -> str:  # part of the sampler fingerprint: unchanged for plain multiples
        return str(self.multiple) if not self.buckets else f"{self.multiple}:{','.join(map(str, self.buckets))}"


def pad_length(n: int, pad: "int | PadRule") -> int:
    """``n`` tokens padded per ``pad``: a :class:`PadRule`, or a plain multiple (tokens)."""
    return pad(n) if isinstance(pad, PadRule) else round_up(n, pad)


def padded_cost(src_lens: Sequence[int], tgt_lens: Sequence[int], multiple: "int | PadRule") -> int:
    """Padded tokens (source + target) of a micro-batch made of these members (``multiple``: a
    :class:`PadRule` or a plain multiple)."""
    if not len(src_lens):
        return 0
    return len(src_lens) * (pad_length(max(src_lens), multiple) + pad_length(max(tgt_lens), multiple))


def plan_micro_batches(
    src_lens: np.ndarray,
    tgt_lens: np.ndarray,
    max_tokens: int,
    max_batch_size: int,
    multiple: "int | PadRule",
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[list[int]]:
    """Cut one epoch into micro-batches under the padded token budget (see module docstring).

    A single thread longer than the budget gets a micro-batch of its own (it cannot be split).
    """
    n = len(src_lens)
    order = np.arange(n)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
    # sort by padded source length, then target: members of a batch pad to nearly the same shape
    key_src = np.array([pad_length(int(x), multiple) for x in src_lens])[order]
    key_tgt = np.array([pad_length(int(x), multiple) for x in tgt_lens])[order]
    order = order[np.lexsort((key_tgt, key_src))]

    batches: list[list[int]] = []
    cur: list[int] = []
    max_s = max_t = 0
    for idx in order.tolist():
        s, t = pad_length(int(src_lens[idx]), multiple), pad_length(int(tgt_lens[idx]), multiple)
        ns, nt = max(max_s, s), max(max_t, t)
        if cur and ((len(cur) + 1) * (ns + nt) > max_tokens or len(cur) >= max_batch_size):
            batches.append(cur)
            cur, ns, nt = [], s, t
        cur.append(idx)
        max_s, max_t = ns, nt
    if cur:
        batches.append(cur)
    if shuffle:
        random.Random(f"{seed}-{epoch}-batches").shuffle(batches)
    return batches


def split_micro_batch(indices: list[int], src_lens, tgt_lens, max_tokens: int, multiple: "int | PadRule") -> list[list[int]]:
    """Split a micro-batch into contiguous pieces of at most ``max_tokens`` padded tokens each
    (pieces of one member when a member alone exceeds it). Used by the OOM back-off."""
    # sorted by length, neighbours pad alike, so pieces waste little
    members = sorted(indices, key=lambda i: (src_lens[i], tgt_lens[i]))
    pieces: list[list[int]] = []
    cur: list[int] = []
    for idx in members:
        cand = cur + [idx]
        if cur and padded_cost([src_lens[i] for i in cand], [tgt_lens[i] for i in cand], multiple) > max_tokens:
            pieces.append(cur)
            cand = [idx]
        cur = cand
    if cur:
        pieces.append(cur)
    return pieces


@dataclass
class TokenBudgetSampler:
    """Endless stream of micro-batches over epochs; ``next_step()`` returns this rank's share of one
    optimizer step. ``state_dict()`` / ``load_state_dict()`` make it resumable mid-epoch."""

    src_lens: np.ndarray
    tgt_lens: np.ndarray
    max_tokens: int
    max_batch_size: int
    pad_to_multiple_of: "int | PadRule"
    seed: int
    accumulation: int = 1
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    epoch: int = 0
    cursor: int = 0

    def __post_init__(self) -> None:
        self._epoch_batches: list[list[int]] | None = None
        self._epoch_of_batches = -1
        self.last_step_global: list[list[int]] = []

    # ---- shape of an epoch
    def batches_for_epoch(self, epoch: int) -> list[list[int]]:
        """All micro-batches (lists of row indices) of ``epoch``, in order (cached for the current epoch)."""
        if self._epoch_of_batches != epoch:
            self._epoch_batches = plan_micro_batches(
                self.src_lens, self.tgt_lens, self.max_tokens, self.max_batch_size,
                self.pad_to_multiple_of, self.seed, epoch, self.shuffle,
            )
            self._epoch_of_batches = epoch
        return self._epoch_batches  # type: ignore[return-value]

    @property
    def micro_batches_per_step(self) -> int:
        """Global micro-batches one optimizer step consumes (all ranks)."""
        return self.accumulation * self.world_size

    def steps_per_epoch(self) -> float:
        """Optimizer steps per pass over the data (fractional)."""
        return len(self.batches_for_epoch(0)) / self.micro_batches_per_step

    # ---- stream
    def next_step(self) -> list[list[int]]:
        """This rank's micro-batches of the next optimizer step (advances the position)."""
        taken: list[list[int]] = []
        while len(taken) < self.micro_batches_per_step:
            batches = self.batches_for_epoch(self.epoch)
            if self.cursor >= len(batches):
                self.epoch += 1
                self.cursor = 0
                continue
            taken.append(batches[self.cursor])
            self.cursor += 1
        # all ranks' micro-batches of this step: the loss is normalised by their label tokens
        self.last_step_global = taken
        return taken[self.rank :: self.world_size]

    @property
    def fractional_epoch(self) -> float:
        """Position in the stream in epochs (e.g. 1.25: a quarter into the second pass)."""
        return self.epoch + self.cursor / max(1, len(self.batches_for_epoch(self.epoch)))

    def fingerprint(self) -> str:
        """Identifies the batching: resuming with another one would silently change the data order."""
        return (f"n={len(self.src_lens)},sum={int(np.sum(self.src_lens)) + int(np.sum(self.tgt_lens))},"
                f"max_tokens={self.max_tokens},bs={self.max_batch_size},mult={self.pad_to_multiple_of},"
                f"seed={self.seed},per_step={self.micro_batches_per_step}")  # any world size x accumulation

    def state_dict(self) -> dict[str, Any]:
        """Position (epoch, cursor) and the batching fingerprint: all a resume needs."""
        return {SAMPLER_EPOCH: self.epoch, SAMPLER_CURSOR: self.cursor, SAMPLER_FINGERPRINT: self.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` position."""
        self.epoch = int(state[SAMPLER_EPOCH])
        self.cursor = int(state[SAMPLER_CURSOR])


def token_lengths(ds) -> tuple[np.ndarray, np.ndarray]:
    """Source and target lengths in tokens of every row of a tokenized split: two int64 arrays [rows],
    read from Arrow's list lengths without materialising the tokens."""
    import pyarrow.compute as pc

    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    src = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    tgt = pc.list_value_length(table.column("labels")).to_numpy(zero_copy_only=False)
    return src.astype(np.int64), tgt.astype(np.int64)


class BatchFetcher:
    """Collation by index: ``fetcher(indices)`` reads those rows from a (memory-mapped) tokenized
    split and returns the family's padded batch (:meth:`threadsum.family.Family.collate`); tokens
    stay in Arrow, not in Python lists."""

    def __init__(self, ds, family, pad_id: int, decoder_start_id: "int | None", multiple: "int | PadRule",
                 train_on_prompt: bool = False):
        self.ds, self.family, self.pad_id = ds, family, pad_id
        self.decoder_start_id, self.multiple, self.train_on_prompt = decoder_start_id, multiple, train_on_prompt

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        rows = self.ds[indices]
        return self.family.collate(rows["input_ids"], rows["labels"], self.pad_id, self.multiple,
                                   self.decoder_start_id, self.train_on_prompt)
