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

``render_threads`` does the same for a whole corpus with batched tokenizer calls (the fast
tokenizer encodes a batch on all cores; one call per thread costs ~4x more on 2 cores).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from threadsum.data.types import Email, Thread

CUT_MARK = " [...]"
MIN_BODY_TOKENS = 24  # below this a shortened body says too little to be worth its header
RENDER_BATCH = 256  # threads per batched tokenizer call: enough to keep every core busy, and the
# per-token offsets of a batch's over-budget threads (~100 bytes a token in Python objects) stay small


@dataclass
class RenderResult:
    """One rendered thread: the model input text, whether and how much it was cut to the token budget,
    its token count and ids (with a tokenizer), and how many emails were dropped to fit.
    """
    text: str
    truncated: bool
    kept_fraction: float
    """Share of the full rendering's tokens that survived (1.0 when nothing was cut or no tokenizer)."""
    n_tokens: Optional[int] = None
    """Tokens of ``text`` including special tokens (None without a tokenizer)."""
    emails_dropped: int = 0
    input_ids: Optional[list[int]] = None
    """Token ids of ``text`` with special tokens, as the model is fed them (None without a tokenizer)."""


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
    """Tokens the tokenizer adds around any text (BART: <s> and </s>; a causal prompt: its template)."""
    fixed = getattr(tokenizer, "n_special_tokens", None)
    if isinstance(fixed, int):
        return fixed
    key = id(tokenizer)
    if key not in _SPECIAL_CACHE:
        _SPECIAL_CACHE[key] = len(tokenizer("", add_special_tokens=True)["input_ids"])
    return _SPECIAL_CACHE[key]


def encode_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids with special tokens (what the model is fed) of many texts: one batched call, which
    the fast tokenizer spreads over its Rust threads.

    When the wrapper would add nothing (no truncation or padding set on the backend, special-token
    splitting as the wrapper has it) this asks the backend for ids only (``encode_batch_fast``: no
    offsets and no per-text Python dicts), the same ids for ~25% less CPU.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (backend is not None and hasattr(backend, "encode_batch_fast") and backend.truncation is None
            and backend.padding is None
            and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=True)]
    return tokenizer(texts, add_special_tokens=True, return_attention_mask=False)["input_ids"]


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
    return render_threads([thread], render_cfg, tokenizer, max_tokens)[0]


def render_threads(threads: list[Thread], render_cfg, tokenizer: Any = None,
                   max_tokens: Optional[int] = None) -> list[RenderResult]:
    """``render_thread`` for many threads, with the same results, batching the tokenizer calls.

    The full renderings are tokenized in batches; only the threads over the budget go through
    truncation, and those are fitted together, one batched call per fitting round. Each result
    carries the ids of its final text, so callers need not tokenize it again.
    """
    out: list[RenderResult] = []
    for i in range(0, len(threads), RENDER_BATCH):
        out.extend(_render_batch(threads[i:i + RENDER_BATCH], render_cfg, tokenizer, max_tokens))
    return out


def _render_batch(threads: list[Thread], render_cfg, tokenizer: Any, max_tokens: Optional[int]) -> list[RenderResult]:
    fulls = [render_plain(t, render_cfg) for t in threads]
    if tokenizer is None or not max_tokens:
        return [RenderResult(f, False, 1.0) for f in fulls]
    special = _n_special(tokenizer)
    budget = max_tokens - special
    results: list[Optional[RenderResult]] = [None] * len(threads)
    over: list[tuple[int, int]] = []  # (index, tokens of the full rendering without special tokens)
    for i, (full, ids) in enumerate(zip(fulls, encode_ids(tokenizer, fulls))):
        total = len(ids) - special
        if total <= budget:
            results[i] = RenderResult(full, False, 1.0, len(ids), input_ids=ids)
        else:
            over.append((i, total))
    if render_cfg.truncation == "head":
        for i, total in over:
            results[i] = _head(fulls[i], tokenizer, budget, special, total)
    elif over:
        fits = [_SmartFit(threads[i], render_cfg, budget, special, total) for i, total in over]
        for i, res in zip((i for i, _ in over), _fit_all(fits, tokenizer)):
            results[i] = res
    return results  # type: ignore[return-value]


def _final(text: str, tokenizer, budget: int, special: int, total: int, dropped: int = 0) -> RenderResult:
    """Cut ``text`` at the budget (merges across the cut can differ, so shave until it fits)."""
    text = _cut(tokenizer, text, budget)
    ids = encode_ids(tokenizer, [text])[0]
    while len(ids) - special > budget:
        text = _cut(tokenizer, text, budget - (len(ids) - special - budget))
        ids = encode_ids(tokenizer, [text])[0]
    return RenderResult(text, True, min(1.0, (len(ids) - special) / total), len(ids), dropped, ids)


def _head(full: str, tokenizer, budget: int, special: int, total: int) -> RenderResult:
    res = _final(full, tokenizer, budget, special, total)
    res.kept_fraction = (res.n_tokens - special) / total  # type: ignore[operator]
    return res


class _SmartFit:
    """One over-budget thread under ``truncation='smart'``; the state is kept between batched rounds."""

    def __init__(self, thread: Thread, cfg, budget: int, special: int, total: int) -> None:
        self.cfg, self.budget, self.special, self.total = cfg, budget, special, total
        self.subject = _subject_line(thread, cfg) + "\n"
        self.heads, self.tails = [], []
        for i, e in enumerate(thread.emails):
            h, t = _email_parts(e, i, thread.subject, cfg)
            self.heads.append(h)
            self.tails.append(t)
        self.bodies = [e.body for e in thread.emails]
        self.slack = 0
        self.text = self.subject

    def pieces(self) -> list[str]:
        """Every piece to measure; body offsets let us cut without re-tokenizing."""
        return (self.bodies + [h + t for h, t in zip(self.heads, self.tails)]
                + [self.cfg.email_separator, CUT_MARK, self.subject])

    def measure(self, ids: list[list[int]], offsets: list[list[tuple[int, int]]]) -> None:
        n = len(self.bodies)
        lens = [len(x) for x in ids]
        self.offsets = offsets[:n]
        self.body_len, self.frame_len = lens[:n], lens[n:2 * n]
        self.sep_len, self.cut_len, self.subj_len = lens[2 * n:]
        # which emails to keep: all, else the first + as many of the latest as minimal bodies allow
        self.keep = list(range(n))
        while len(self.keep) > 2 and (self.fixed(self.keep) + sum(min(self.body_len[i], MIN_BODY_TOKENS)
                                                                  for i in self.keep) > self.budget):
            self.keep.pop(1)  # the oldest email after the first goes first
        self.dropped = n - len(self.keep)

    def fixed(self, idx: list[int]) -> int:
        omitted = 1 if len(idx) < len(self.bodies) else 0
        return (self.subj_len + sum(self.frame_len[i] + self.cut_len for i in idx)
                + self.sep_len * (len(idx) - 1 + omitted) + 12 * omitted)

    def candidate(self) -> str:
        avail = max(0, self.budget - self.fixed(self.keep) - self.slack)
        cap = _cap_for([self.body_len[i] for i in self.keep], avail)
        pieces = []
        for pos, i in enumerate(self.keep):
            if self.body_len[i] <= cap:
                body = self.bodies[i]
            else:
                body = (self.bodies[i][: self.offsets[i][cap - 1][1]] if cap > 0 else "").rstrip() + CUT_MARK
            pieces.append(self.heads[i] + body + self.tails[i])
            if self.dropped and pos == 0:
                pieces.append(f"[... {self.dropped} email{'s' if self.dropped > 1 else ''} omitted ...]")
        self.text = self.subject + self.cfg.email_separator.join(pieces)
        return self.text

    def accept(self, ids: list[int]) -> Optional[RenderResult]:
        """The result when the candidate fits, else None (and the next candidate is tighter)."""
        n_tok = len(ids) - self.special
        if n_tok <= self.budget:
            return RenderResult(self.text, True, min(1.0, n_tok / self.total), len(ids), self.dropped, ids)
        self.slack += n_tok - self.budget + 2
        return None


def _fit_all(fits: list[_SmartFit], tokenizer) -> list[RenderResult]:
    pieces = [f.pieces() for f in fits]
    enc = tokenizer([p for ps in pieces for p in ps], add_special_tokens=False, return_offsets_mapping=True)
    pos = 0
    for f, ps in zip(fits, pieces):
        f.measure(enc["input_ids"][pos:pos + len(ps)], enc["offset_mapping"][pos:pos + len(ps)])
        pos += len(ps)
    del enc
    done: list[Optional[RenderResult]] = [None] * len(fits)
    pending = list(range(len(fits)))
    for _ in range(6):  # re-tokenizing the joined text can differ by a few tokens from the sum of parts
        if not pending:
            break
        ids = encode_ids(tokenizer, [fits[k].candidate() for k in pending])
        still = []
        for k, x in zip(pending, ids):
            done[k] = fits[k].accept(x)
            if done[k] is None:
                still.append(k)
        pending = still
    for k in pending:  # last resort (headers alone exceed the budget): plain head cut
        f = fits[k]
        done[k] = _final(f.text, tokenizer, f.budget, f.special, f.total, f.dropped)
    return done  # type: ignore[return-value]
