"""Rendering: a cleaned thread -> the model's input text, fitted to a token budget.

The template (``RenderConfig``) writes the subject once, then each email with sender, recipients,
date and body, separated by ``email_separator``. When a tokenizer and budget are given and the
text is too long, ``truncation='smart'``:

1. keeps every email's header and shortens bodies to a common cap (water-filling): short emails stay
   whole, long bodies are cut to the same length, so one long forward cannot crowd out the replies;
2. if even minimal bodies do not fit, drops emails from the middle of the thread, always keeping the
   first email (what the thread is about) and the latest ones (how it ended), and says how many
   were left out.

``truncation='head'`` renders everything and cuts the token sequence at the budget.
Cuts happen at token boundaries (offsets of the real tokenizer), so the final text re-tokenizes
to at most the budget; the function verifies this and tightens the cap when merges differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from threadsum.data.types import Email, Thread

CUT_MARK = " [...]"
MIN_BODY_TOKENS = 24  # below this a shortened body says too little to be worth its header


@dataclass
class RenderResult:
    text: str
    truncated: bool
    kept_fraction: float
    """Share of the full rendering's tokens that survived (1.0 when nothing was cut or no tokenizer)."""
    n_tokens: Optional[int] = None
    """Tokens of ``text`` including special tokens (None without a tokenizer)."""
    emails_dropped: int = 0


def _fmt_date(e: Email) -> str:
    return e.date.strftime("%Y-%m-%d %H:%M") if e.date else "unknown"


def _email_parts(e: Email, index: int, subject: str, cfg) -> tuple[str, str]:
    """(text before the body, text after the body) of one email under the template."""
    fields = {"sender": e.sender or "unknown", "recipients": ", ".join(e.recipients) or "unknown",
              "date": _fmt_date(e), "subject": e.subject or subject, "index": index + 1}
    marker = "\x00BODY\x00"
    full = cfg.template.format(body=marker, **fields)
    head, _, tail = full.partition(marker)
    return head, tail


def _subject_line(thread: Thread, cfg) -> str:
    return cfg.subject_template.format(subject=thread.subject or "(no subject)")


def render_plain(thread: Thread, render_cfg) -> str:
    """The full rendering, no budget."""
    parts = []
    for i, e in enumerate(thread.emails):
        head, tail = _email_parts(e, i, thread.subject, render_cfg)
        parts.append(head + e.body + tail)
    return _subject_line(thread, render_cfg) + "\n" + render_cfg.email_separator.join(parts)


_SPECIAL_CACHE: dict[int, int] = {}


def _n_special(tokenizer) -> int:
    key = id(tokenizer)
    if key not in _SPECIAL_CACHE:
        _SPECIAL_CACHE[key] = len(tokenizer("", add_special_tokens=True)["input_ids"])
    return _SPECIAL_CACHE[key]


def _count(tokenizer, texts: list[str]) -> list[int]:
    if not texts:
        return []
    return [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _cut(tokenizer, text: str, n_tokens: int) -> str:
    """The prefix of ``text`` covering its first ``n_tokens`` tokens (cut at a token boundary)."""
    if n_tokens <= 0:
        return ""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if n_tokens >= len(offsets):
        return text
    return text[: offsets[n_tokens - 1][1]]


def _cap_for(lengths: list[int], budget: int) -> int:
    """Largest cap with sum(min(l, cap)) <= budget (water-filling)."""
    if sum(lengths) <= budget:
        return max(lengths, default=0)
    lo, hi = 0, max(lengths)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(x, mid) for x in lengths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def render_thread(thread: Thread, render_cfg, tokenizer: Any = None, max_tokens: Optional[int] = None) -> RenderResult:
    """Render ``thread`` (already cleaned) and fit it into ``max_tokens`` tokens of ``tokenizer``."""
    full = render_plain(thread, render_cfg)
    if tokenizer is None or not max_tokens:
        return RenderResult(full, False, 1.0)
    special = _n_special(tokenizer)
    budget = max_tokens - special
    total = _count(tokenizer, [full])[0]
    if total <= budget:
        return RenderResult(full, False, 1.0, total + special)
    if render_cfg.truncation == "head":
        text = _cut(tokenizer, full, budget)
        n = _count(tokenizer, [text])[0]
        while n > budget:  # merges across the cut can differ; shave until it fits
            text = _cut(tokenizer, text, budget - (n - budget))
            n = _count(tokenizer, [text])[0]
        return RenderResult(text, True, n / total, n + special)
    return _smart(thread, render_cfg, tokenizer, budget, special, total)


def _smart(thread: Thread, cfg, tokenizer, budget: int, special: int, total: int) -> RenderResult:
    subject = _subject_line(thread, cfg) + "\n"
    heads, tails = [], []
    for i, e in enumerate(thread.emails):
        h, t = _email_parts(e, i, thread.subject, cfg)
        heads.append(h)
        tails.append(t)
    bodies = [e.body for e in thread.emails]
    n = len(bodies)
    # one batched call for every piece; body offsets let us cut without re-tokenizing
    enc = tokenizer(bodies + [h + t for h, t in zip(heads, tails)] + [cfg.email_separator, CUT_MARK, subject],
                    add_special_tokens=False, return_offsets_mapping=True)
    lens = [len(x) for x in enc["input_ids"]]
    offsets = enc["offset_mapping"][:n]
    body_len, frame_len = lens[:n], lens[n:2 * n]
    sep_len, cut_len, subj_len = lens[2 * n:]

    def cut(i: int, k: int) -> str:
        return bodies[i][: offsets[i][k - 1][1]] if k > 0 else ""

    keep = list(range(n))

    def fixed(idx: list[int]) -> int:
        omitted = 1 if len(idx) < n else 0
        return subj_len + sum(frame_len[i] + cut_len for i in idx) + sep_len * (len(idx) - 1 + omitted) + 12 * omitted

    # which emails to keep: all, else the first + as many of the latest as minimal bodies allow
    while len(keep) > 2 and fixed(keep) + sum(min(body_len[i], MIN_BODY_TOKENS) for i in keep) > budget:
        keep.pop(1)  # the oldest email after the first goes first
    dropped = n - len(keep)

    slack = 0
    text = subject
    for _ in range(6):  # re-tokenizing the joined text can differ by a few tokens from the sum of parts
        avail = max(0, budget - fixed(keep) - slack)
        cap = _cap_for([body_len[i] for i in keep], avail)
        pieces = []
        for pos, i in enumerate(keep):
            body = bodies[i] if body_len[i] <= cap else cut(i, cap).rstrip() + CUT_MARK
            pieces.append(heads[i] + body + tails[i])
            if dropped and pos == 0:
                pieces.append(f"[... {dropped} email{'s' if dropped > 1 else ''} omitted ...]")
        text = subject + cfg.email_separator.join(pieces)
        n_tok = _count(tokenizer, [text])[0]
        if n_tok <= budget:
            return RenderResult(text, True, min(1.0, n_tok / total), n_tok + special, dropped)
        slack += n_tok - budget + 2
    # last resort (headers alone exceed the budget): plain head cut
    text = _cut(tokenizer, text, budget)
    n_tok = _count(tokenizer, [text])[0]
    while n_tok > budget:
        text = _cut(tokenizer, text, budget - (n_tok - budget))
        n_tok = _count(tokenizer, [text])[0]
    return RenderResult(text, True, min(1.0, n_tok / total), n_tok + special, dropped)
