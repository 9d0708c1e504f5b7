"""Deterministic train/validation/test assignment by a salted hash of thread_id.

The split of a thread depends only on (salt, thread_id, fractions): never on row order, corpus size
or the other threads, so a thread never spans two splits and re-running (or adding threads) keeps
every existing thread where it was.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

SPLITS = ("train", "validation", "test")


def split_unit(thread_id: str, salt: str) -> float:
    """A uniform number in [0, 1) from sha256(salt + thread_id); stable across Python versions and runs."""
    digest = hashlib.sha256(f"{salt}\x1f{thread_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(thread_id: str, validation_fraction: float, test_fraction: float, salt: str) -> str:
    """The split of ``thread_id``: test when ``split_unit(thread_id, salt) < test_fraction``, validation
    below ``test_fraction + validation_fraction``, else train (see the module docstring for why).
    """
    u = split_unit(str(thread_id), salt)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def split_ids(thread_ids: Iterable[str], validation_fraction: float, test_fraction: float, salt: str) -> dict[str, str]:
    """``{thread_id: split}`` for every id, by ``assign_split``."""
    return {t: assign_split(t, validation_fraction, test_fraction, salt) for t in thread_ids}
