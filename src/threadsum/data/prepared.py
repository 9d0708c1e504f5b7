"""The on-disk contract between `prepare` and everything after it.

A prepared folder holds:

    tokenizer/                 Hugging Face tokenizer (from_pretrained-loadable)
    tokenized/                 datasets.DatasetDict.save_to_disk: splits train/validation/test,
                               columns thread_id (str), input_ids (list[int]), labels (list[int])
    threads/{split}.jsonl      one line per kept thread: thread_id, subject, source (rendered,
                               cleaned, truncated model input text), summary, first_email,
                               n_emails, source_tokens, truncated
    config.yaml                the resolved config that made it
    prepare.json               counts (input = kept + rejected), cache key, timings
    rejects.jsonl              every rejected row/thread with its reason
    report.md, *.png           the data report
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from threadsum.errors import UserError

SPLITS = ("train", "validation", "test")


class PreparedDataError(UserError):
    """A prepared folder is missing or incomplete; the message says which command makes it."""


@dataclass
class Prepared:
    """A folder written by ``prepare``: the tokenizer, the tokenized splits and the cleaned threads per split."""
    root: Path

    @property
    def tokenizer_dir(self) -> Path:
        """The folder of the tokenizer saved with the data."""
        return self.root / "tokenizer"

    @property
    def tokenized_dir(self) -> Path:
        """The folder of the tokenized DatasetDict (one split per name in ``SPLITS``)."""
        return self.root / "tokenized"

    def threads_file(self, split: str) -> Path:
        """The JSONL file of the cleaned threads of ``split`` (one of ``SPLITS``); it may not exist."""
        return self.root / "threads" / f"{split}.jsonl"

    def datasets(self):
        """The tokenized DatasetDict (memory-mapped Arrow)."""
        from datasets import load_from_disk

        return load_from_disk(str(self.tokenized_dir))

    def threads(self, split: str) -> Iterator[dict[str, Any]]:
        """Yield the cleaned threads of ``split`` as dicts, one per non-blank JSONL line.

        Raises:
            FileNotFoundError: the split's threads file does not exist.
        """
        with self.threads_file(split).open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)


def open_prepared(path: str | Path) -> Prepared:
    """Open the prepared folder at ``path`` after checking it has tokenizer/, tokenized/ and threads/.

    Raises:
        PreparedDataError: any of the three is missing; the message says to run ``threadsum prepare``.
    """
    root = Path(path)
    missing = [p for p in ("tokenizer", "tokenized", "threads") if not (root / p).exists()]
    if missing:
        raise PreparedDataError(
            f"'{root}' is not a prepared dataset (missing: {', '.join(missing)}). "
            f"Run `threadsum prepare --config <your config>` first (it writes data.prepared_dir)."
        )
    return Prepared(root)
