"""Grounding: which facts of a summary its email thread supports, and the evidence for each.

Entry point::

    from threadsum.verify import check
    claims = check(thread, summary)          # thread: threadsum.data.types.Thread
    [c.to_dict() for c in claims]            # {"text", "kind", "supported", "evidence", "start", "end", "reason"}

Each claim is a span of the summary (``start``/``end`` character offsets) of one kind in ``KINDS``
(person, organisation, money, number, percent, date, time, weekday, action). ``evidence`` is
``{"email": index in thread.emails, "line": the supporting line}`` when the thread supports it;
``reason`` says why not otherwise. ``grounding_stats`` turns many checks into the figures
``threadsum evaluate`` reports. Deterministic, no model weights; what it cannot catch is listed in
``threadsum.verify.claims``.

The mirror question, what the summary left out: ``coverage(thread, summary)`` lists the thread's
facts worth carrying (values, deadlines, requests with their owner, decisions, attachments), ranked
by salience, each marked carried or not (``threadsum.verify.coverage``).
"""
from threadsum.verify.claims import KINDS, Claim, check, check_indexed
from threadsum.verify.coverage import Fact, coverage, coverage_indexed, coverage_report
from threadsum.verify.evidence import index_thread
from threadsum.verify.stats import grounding_stats

__all__ = ["KINDS", "Claim", "Fact", "check", "coverage", "coverage_indexed", "coverage_report", "check_indexed", "grounding_stats", "index_thread"]
