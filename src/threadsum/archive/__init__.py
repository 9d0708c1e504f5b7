"""Summarize whole mail archives: `threadsum summarize INPUT... -m MODEL --out DIR`.

The inputs are read by the readers ``prepare`` uses (:mod:`threadsum.archive.sources`), the threads
are grouped into shards of a bounded size, and each shard is summarized by the same
:class:`~threadsum.inference.summarizer.Summarizer` the CLI and the service use
(:mod:`threadsum.archive.work`), on this machine or on Ray Data actors
(:mod:`threadsum.archive.ray_runner`). Each finished shard is written atomically into the job
folder (:mod:`threadsum.archive.layout`), so a rerun of the same command redoes only the shards that
had not finished: every thread is summarized or rejected exactly once. :mod:`threadsum.archive.job`
ties it together and reconciles the counts.
"""
