"""Benchmark: how well `threadsum.verify.check` flags invented or misattributed facts, and how often it cries wolf.

    python bench/bench_verify.py [--threads 600] [--seed 11] [--sample /work/shared/data/kaggle_sample] [--results FILE]

Recall: synthetic threads (data/synth.py) are read back through the Kaggle reader, exactly as
`prepare` reads them; each reference summary that the check leaves unflagged gets one span
perturbed per applicable kind:

- person_outsider: a person becomes a name found nowhere in the thread;
- person_participant: the subject of "agrees"/"declines"/"confirms"/"forwards" becomes another
  participant of the same thread (someone who is in the thread, but did not write that);
- amount: "ten million" -> "twelve million", "sixty days" -> "ninety days", ...;
- time: "noon" -> another clock time; weekday: a weekday -> one the thread never mentions;
- date: "May 5" -> another day; organisation: a company -> one the thread never mentions;
- swap_asker: "A asks B to ..." -> "B asks A to ...".

A perturbation counts as flagged when an unsupported claim overlaps the changed span. False
alarms: the share of untouched reference summaries with any unsupported claim, on the synthetic
references and on the real public sample (Kaggle reader). Goals: recall >= 95%, false alarms <= 5%.

Names as people write them: every supported organisation and person name of the real references
(and one per synthetic reference) is rewritten the ways a correct summary may write it (plural or
singular, possessive 's and s', an abbreviation of ``names.ABBREVIATIONS`` swapped either way,
upper case, an acronym in title case, a legal form added to an organisation); a rewritten
reference with any unsupported claim is a false alarm. The same names with one letter changed
("EPMI" -> "EPMX"), alone, made plural, made possessive and with a legal form added, are invented
names that must be flagged (recall of near misses).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

from threadsum.data.readers import read_kaggle
from threadsum.data.synth import COMPANIES, FIRST, generate, write_kaggle_csv
from threadsum.verify.claims import check_indexed
from threadsum.verify.evidence import index_thread
from threadsum.verify.names import ABBREVIATIONS, fold
from threadsum.verify.values import WEEKDAYS

OUTSIDERS = ["Okafor", "Lindqvist", "Tanaka", "Moreau", "Novak", "Castillo", "Brennan", "Haddad", "Petrov", "Achebe"]
AMOUNTS = {"ten million": "twelve million", "five million": "seven million", "sixty days": "ninety days"}
TIMES = ["3 p.m.", "9:30 a.m.", "4:15 pm", "11 am"]


def _replace(summary: str, old: str, new: str, at: int) -> tuple[str, tuple[int, int]]:
    return summary[:at] + new + summary[at + len(old):], (at, at + len(new))


def perturbations(st, thread_text: str, rng: random.Random) -> list[tuple[str, str, tuple[int, int]]]:
    """(kind, perturbed summary, changed span) for every kind that applies to this synthetic thread."""
    s, f = st.summary, st.facts
    out = []
    participants = sorted({m.sender.name for m in st.mails} | {p.name for m in st.mails for p in m.to})
    lasts = {n.split()[-1].lower() for n in participants}
    # person_outsider: one person mention -> an unknown name
    people = [n for n in (f["asker"], f["helper"], f["decider"], f["outsider"]) if n and n in s]
    if people:
        who = rng.choice(people)
        # surnames the generator never uses: a long distribution list can hold every one of synth.LAST
        fake = f"{rng.choice(FIRST)} {rng.choice([n for n in OUTSIDERS if n.lower() not in lasts])}"
        at = rng.choice([m.start() for m in re.finditer(re.escape(who), s)])
        out.append(("person_outsider", *_replace(s, who, fake, at)))
    # person_participant: the author of an action becomes another participant
    targets = []
    for verb_phrase, who in ((" agrees to do it", f["helper"]), (" declines because", f["helper"]),
                             (" confirms that", f["decider"]), (" forwards a note", f["asker"])):
        at = s.find(who + verb_phrase)
        if at >= 0:
            targets.append((who, at))
    if targets:
        who, at = rng.choice(targets)
        others = [p for p in participants if p != who and p.split()[0] != who.split()[0]]
        if others:
            out.append(("person_participant", *_replace(s, who, rng.choice(others), at)))
    for old, new in AMOUNTS.items():
        if old in s:
            out.append(("amount", *_replace(s, old, new, s.find(old))))
            break
    if " noon" in s:
        out.append(("time", *_replace(s, "noon", rng.choice(TIMES), s.find("noon"))))
    days = [m for m in re.finditer(r"\b(Monday|Tuesday|Wednesday|Thursday|Friday)\b", s)]
    if days:
        m = rng.choice(days)
        unused = [d.title() for d in WEEKDAYS[:5] if d not in thread_text]
        if unused:
            out.append(("weekday", *_replace(s, m.group(0), rng.choice(unused), m.start())))
    m = re.search(r"\b(May 5|December 1)\b", s)
    if m:
        new = "May 19" if m.group(0) == "May 5" else "December 14"
        out.append(("date", *_replace(s, m.group(0), new, m.start())))
    companies = [c for c in COMPANIES if re.search(rf"\b{re.escape(c)}\b", s)]
    if companies:
        old = rng.choice(companies)
        unused = [c for c in COMPANIES if fold(c) not in thread_text]
        if unused:
            out.append(("organisation", *_replace(s, old, rng.choice(unused), s.find(old))))
    ask = f"{f['asker']} asks {f['helper']}"
    if ask in s:
        swapped = f"{f['helper']} asks {f['asker']}"
        at = s.find(ask)
        out.append(("swap_asker", s[:at] + swapped + s[at + len(ask):], (at, at + len(swapped))))
    return out


def real_perturbation(claim, summary: str, thread_text: str, rng: random.Random):
    """The real reference with one supported claim's span changed (None for kinds not perturbed)."""
    text, kind = claim.text, claim.kind
    if kind == "person":
        first = [f for f in FIRST if fold(f) not in thread_text] or ["Ingrid"]
        last = [n for n in OUTSIDERS if fold(n) not in thread_text]
        new = " ".join([rng.choice(first), rng.choice(last)][: max(1, min(2, len(text.split())))])
    elif kind == "organisation":
        new = next(c for c in ("Globex", "Initech", "Umbrella Corp") if fold(c) not in thread_text)
    elif kind in ("money", "number", "percent", "date"):
        m = re.search(r"\d+", text)
        if not m:
            return None
        n = int(m.group(0))
        new = text[:m.start()] + str(n + 9 if kind != "date" else (n + 9 if n + 9 <= 28 else n - 9)) + text[m.end():]
    elif kind == "time":
        m = re.search(r"\d+", text)
        if not m:
            return None
        new = text[:m.start()] + str((int(m.group(0)) + 2) % 12 + 1) + text[m.end():]
    elif kind == "weekday":
        unused = [d.title() for d in WEEKDAYS if d not in thread_text]
        if not unused:
            return None
        new = rng.choice(unused)
    else:
        return None
    return summary[:claim.start] + new + summary[claim.end:], (claim.start, claim.start + len(new))


_ABBREVIATION_OF = {full: short for short, full in ABBREVIATIONS.items()}


def pluralise(word: str) -> str:
    """English plural of one word, keeping its case: List -> Lists, Utility -> Utilities, Box -> Boxes."""
    low = word.lower()
    upper = word.isupper() and len(word) > 1
    if low.endswith("y") and len(low) > 2 and low[-2] not in "aeiou":
        tail, word = ("IES" if upper else "ies"), word[:-1]
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        tail = "ES" if upper else "es"
    else:
        tail = "s"  # 'LDCs', 'ISDAs': an acronym's plural is a lower-case s
    return word + tail


def name_variants(text: str, kind: str) -> list[tuple[str, str]]:
    """(variant kind, the name written another correct way) for a person or organisation name."""
    words = text.split()
    last = words[-1]
    out = []
    if kind == "organisation" and last.isalpha():
        low = last.lower()
        if low.endswith("s") and not low.endswith("ss") and len(low) > 3:
            single = last[:-3] + ("y" if last[-3] == "i" else "Y") if low.endswith("ies") else last[:-1]
            out.append(("singular", " ".join(words[:-1] + [single])))
        else:
            out.append(("plural", " ".join(words[:-1] + [pluralise(last)])))
    out.append(("possessive 's", text + "'s"))
    if text.endswith("s"):
        out.append(("possessive s'", text + "'"))
    if kind == "organisation":
        for i, w in enumerate(words):
            f = fold(w.rstrip("."))
            swap = ABBREVIATIONS.get(f) or _ABBREVIATION_OF.get(f)
            if swap:
                out.append(("abbreviation", " ".join(words[:i] + [swap.title()] + words[i + 1:])))
        if not any(fold(w.rstrip(".")) in ("inc", "corp", "co", "llc", "ltd", "company", "corporation") for w in words):
            out.append(("legal form", text + " Inc."))
    if not text.isupper():
        out.append(("upper case", text.upper()))
    elif len(text) > 3 and text.isalpha():
        out.append(("title case", text.title()))
    return out


def near_miss(text: str, thread_text: str, rng: random.Random) -> Optional[str]:
    """``text`` with one letter of its longest word changed so that no word of the thread starts
    with the result ('EPMI' -> 'EPMX', 'Theriot' -> 'Therion'); None when no such change is found."""
    words = text.split()
    i = max(range(len(words)), key=lambda k: len(words[k]))
    w = words[i]
    letters = [k for k in range(1, len(w)) if w[k].isalpha()]
    for _ in range(20):
        if not letters:
            return None
        k = rng.choice(letters)
        c = rng.choice([x for x in "abcdefghijklmnopqrstuvwxyz" if x != w[k].lower()])
        new = w[:k] + (c.upper() if w[k].isupper() else c) + w[k + 1:]
        if f" {fold(new.rstrip('.'))}" not in thread_text:
            return " ".join(words[:i] + [new] + words[i + 1:])
    return None


def name_checks(idx, summary: str, claims, rng: random.Random, variants: dict, near: dict, examples: dict,
                limit: Optional[int] = None) -> int:
    """Rewrite supported names of one reference both ways (see the module docstring); returns checks run.

    ``variants[kind]`` / ``near[kind]`` gather [alarms or hits, tries]; ``limit`` caps the names used.
    """
    names = [c for c in claims if c.supported and c.kind in ("person", "organisation") and c.text[:1].isupper()]
    if limit is not None and len(names) > limit:
        names = rng.sample(names, limit)
    n = 0
    for c in names:
        for vkind, text in name_variants(c.text, c.kind):
            changed = summary[:c.start] + text + summary[c.end:]
            bad = [b for b in check_indexed(idx, changed) if not b.supported]
            n += 1
            variants[vkind][0] += bool(bad)
            variants[vkind][1] += 1
            if bad and len(examples["alarm"]) < 6:
                examples["alarm"].append(f"[{vkind}] {c.text!r} -> {text!r}: " + "; ".join(f"{b.text!r}" for b in bad))
        wrong = near_miss(c.text, idx.folded_text, rng)
        if wrong is None:
            continue
        for nkind, text in (("changed letter", wrong), ("changed letter, plural", None),
                            ("changed letter, possessive", wrong + "'s"), ("changed letter, legal form", wrong + " Corp")):
            if text is None:
                ws = wrong.split()
                if not ws[-1].isalpha():
                    continue
                text = " ".join(ws[:-1] + [pluralise(ws[-1])])
            changed = summary[:c.start] + text + summary[c.end:]
            ok = flagged(check_indexed(idx, changed), (c.start, c.start + len(text)))
            n += 1
            near[nkind][0] += ok
            near[nkind][1] += 1
            if not ok and len(examples["miss"]) < 6:
                examples["miss"].append(f"[{nkind}] {c.text!r} -> {text!r}")
    return n


def thread_side_checks(thread, claims, variants: dict, examples: dict) -> None:
    """The other direction: the thread writes a supported organisation name another way (its bodies and
    subjects rewritten with :func:`name_variants`) and the untouched reference must still pass."""
    seen = set()
    for c in claims:
        if not (c.supported and c.kind == "organisation" and c.text[:1].isupper()) or c.text in seen:
            continue
        seen.add(c.text)
        pattern = re.compile(rf"(?<![\w'’]){re.escape(c.text)}(?![\w'’])")
        for vkind, text in name_variants(c.text, c.kind):
            emails = [dataclasses.replace(e, body=pattern.sub(text, e.body or ""), subject=pattern.sub(text, e.subject or ""))
                      for e in thread.emails]
            if emails == thread.emails:
                continue
            changed = dataclasses.replace(thread, emails=emails, subject=pattern.sub(text, thread.subject or ""))
            bad = [b for b in check_indexed(index_thread(changed), thread.summary) if not b.supported]
            variants[vkind][0] += bool(bad)
            variants[vkind][1] += 1
            if bad and len(examples["alarm"]) < 6:
                examples["alarm"].append(f"[{vkind}, in the thread] {c.text!r} -> {text!r}: " +
                                         "; ".join(f"{b.text!r}" for b in bad))


def flagged(claims, span: tuple[int, int]) -> bool:
    return any(not c.supported and c.start < span[1] and c.end > span[0] for c in claims)


def run(n_threads: int, seed: int, sample: Path) -> dict:
    rng = random.Random(seed)
    synth = generate(n_threads, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        details, summaries = write_kaggle_csv(tmp, n_threads, seed=seed)
        threads = {t.thread_id: t for t in read_kaggle(details, summaries).threads}
    t0 = time.perf_counter()
    false_alarm_synth, alarms = 0, Counter()
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses: dict[str, list[str]] = defaultdict(list)
    n_checks = 0
    synth_names, real_names, real_thread_names = _name_tally(), _name_tally(), _name_tally()
    for st in synth:
        thread = threads[str(st.thread_id)]
        idx = index_thread(thread)
        base = check_indexed(idx, thread.summary)
        n_checks += 1
        bad = [c for c in base if not c.supported]
        if bad:
            false_alarm_synth += 1
            alarms.update(c.kind for c in bad)
            if false_alarm_synth <= 3:
                print(f"false alarm, synthetic thread {st.thread_id}: " +
                      "; ".join(f"[{c.kind}] {c.text!r}: {c.reason}" for c in bad), file=sys.stderr)
            continue
        n_checks += name_checks(idx, thread.summary, base, rng, synth_names["variants"], synth_names["near"],
                                synth_names["examples"], limit=1)
        for kind, text, span in perturbations(st, idx.folded_text, rng):
            claims = check_indexed(idx, text)
            n_checks += 1
            ok = flagged(claims, span)
            hits[kind][0] += ok
            hits[kind][1] += 1
            if not ok and len(misses[kind]) < 3:
                misses[kind].append(text[max(0, span[0] - 40):span[1] + 40])
    seconds = time.perf_counter() - t0
    real = read_kaggle(sample / "email_thread_details.csv", sample / "email_thread_summaries.csv").threads
    real_alarms = []
    real_hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in real:
        idx = index_thread(t)
        claims = check_indexed(idx, t.summary or "")
        bad = [c for c in claims if not c.supported]
        if bad:
            real_alarms.append((t.thread_id, [(c.kind, c.text, c.reason) for c in bad]))
        name_checks(idx, t.summary or "", claims, rng, real_names["variants"], real_names["near"], real_names["examples"])
        thread_side_checks(t, claims, real_thread_names["variants"], real_thread_names["examples"])
        writers = sorted({a.first for a, _, _ in idx.authors if len(a.first) > 2})
        for c in claims:
            subject = next((p for p in claims if p.kind == "person" and p.start == c.start), None)
            if c.kind == "action" and c.supported and subject is not None:
                others = [w for w in writers if fold(w) not in fold(subject.text)]
                if others:  # the same action credited to someone else who wrote in the thread
                    text = t.summary[:c.start] + rng.choice(others).title() + t.summary[subject.end:]
                    real_hits["action_other_writer"][0] += flagged(check_indexed(idx, text), (c.start, c.start + 1))
                    real_hits["action_other_writer"][1] += 1
            got = real_perturbation(c, t.summary, idx.folded_text, rng) if c.supported else None
            if got is None:
                continue
            text, span = got
            real_hits[c.kind][0] += flagged(check_indexed(idx, text), span)
            real_hits[c.kind][1] += 1
    return {"n_threads": n_threads, "seed": seed, "hits": dict(hits), "misses": dict(misses),
            "false_alarm_synth": false_alarm_synth, "alarm_kinds": dict(alarms), "real": len(real),
            "real_alarms": real_alarms, "real_hits": dict(real_hits), "seconds": seconds, "checks": n_checks,
            "names": {"synthetic": synth_names, "real": real_names, "real_thread": real_thread_names}}


def _name_tally() -> dict:
    return {"variants": defaultdict(lambda: [0, 0]), "near": defaultdict(lambda: [0, 0]),
            "examples": {"alarm": [], "miss": []}}


def _cpu() -> str:
    try:
        info = open("/proc/cpuinfo").read().splitlines()
        model = next(ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name"))
        flags = set(next(ln.split(":", 1)[1] for ln in info if ln.startswith("flags")).split())
    except (OSError, StopIteration):
        model, flags = platform.machine(), set()
    has = [f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni") if f in flags]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} CPUs (flags: {', '.join(has) or 'none of avx512_bf16/amx/vnni'}; load average {load})"


def report(r: dict, command: str) -> str:
    total_hit = sum(h for h, _ in r["hits"].values())
    total = sum(n for _, n in r["hits"].values())
    recall = total_hit / total if total else float("nan")
    fa_synth = r["false_alarm_synth"] / r["n_threads"]
    fa_real = len(r["real_alarms"]) / r["real"] if r["real"] else float("nan")
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    lines = [
        "## threadsum verify: recall on perturbed references, false alarms on untouched ones", "",
        f"Command: `{command}`  ",
        f"Machine: {_cpu()}, {platform.python_implementation()} {platform.python_version()}; "
        f"{r['checks']} checks in {r['seconds']:.1f} s ({1000 * r['seconds'] / max(1, r['checks']):.0f} ms per summary, "
        "index and check)", "",
        f"- recall: **{100 * recall:.1f}%** of {total} perturbed spans flagged (goal >= 95%: {verdict(recall >= 0.95)})",
        f"- false alarms, synthetic references: **{100 * fa_synth:.1f}%** ({r['false_alarm_synth']} of "
        f"{r['n_threads']}; goal <= 5%: {verdict(fa_synth <= 0.05)})",
        f"- false alarms, real public sample: **{100 * fa_real:.1f}%** ({len(r['real_alarms'])} of {r['real']}; "
        f"goal <= 5%: {verdict(fa_real <= 0.05)})", "",
        "| perturbation | flagged | of | recall |", "|---|---:|---:|---:|",
    ]
    for kind, (h, n) in sorted(r["hits"].items()):
        lines.append(f"| {kind} | {h} | {n} | {100 * h / n:.1f}% |")
    rh = dict(r.get("real_hits") or {})
    act = rh.pop("action_other_writer", None)
    if rh:
        h, n = sum(a for a, _ in rh.values()), sum(b for _, b in rh.values())
        lines += ["", f"Recall on the real sample, names and values (each supported person, organisation and value of "
                  f"the 10 real references changed once, one at a time): **{100 * h / n:.1f}%** ({h} of {n}); by kind: "
                  + ", ".join(f"{k} {a}/{b}" for k, (a, b) in sorted(rh.items()))]
    if act:
        lines += ["", f"Recall on the real sample, actions credited to another writer of the same thread "
                  f"('Kay suggests ...' -> 'Reagan suggests ...'): **{100 * act[0] / act[1]:.1f}%** ({act[0]} of "
                  f"{act[1]}). Real references paraphrase, so most of their action clauses match no sentence of the "
                  f"thread closely and only authorship is checked: a writer of the thread passes."]
    for scope, label in (("real", f"the {r['real']} real references"),
                         ("real_thread", f"the threads of the {r['real']} real references, rewritten"),
                         ("synthetic", "synthetic references")):
        tally = r["names"][scope]
        va, vn = sum(a for a, _ in tally["variants"].values()), sum(b for _, b in tally["variants"].values())
        nh, nn = sum(a for a, _ in tally["near"].values()), sum(b for _, b in tally["near"].values())
        if not vn:
            continue
        how = {"synthetic": " (one name per reference)", "real": " (every supported name)",
               "real_thread": " (every supported organisation name, written another way in the thread)"}[scope]
        lines += ["", f"Names as people write them, {label}{how}:",
                  f"- false alarms on rewritten correct names: **{100 * va / vn:.1f}%** ({va} of {vn}; goal <= 5%: "
                  f"{verdict(va <= 0.05 * vn)}); by kind: "
                  + ", ".join(f"{k} {a}/{b}" for k, (a, b) in sorted(tally["variants"].items()))]
        if nn:
            lines += ["- recall of changed names (one letter changed; alone, plural, possessive, with a legal form): "
                      f"**{100 * nh / nn:.1f}%** ({nh} of {nn}; goal >= 95%: {verdict(nh >= 0.95 * nn)}); by kind: "
                      + ", ".join(f"{k} {a}/{b}" for k, (a, b) in sorted(tally["near"].items()))]
        lines += [f"  - false alarm: {e}" for e in tally["examples"]["alarm"]]
        lines += [f"  - missed: {e}" for e in tally["examples"]["miss"]]
    if r["alarm_kinds"]:
        lines += ["", "Unsupported claims on untouched synthetic references, by kind: " +
                  ", ".join(f"{k} {v}" for k, v in sorted(r["alarm_kinds"].items()))]
    for tid, bad in r["real_alarms"]:
        lines.append(f"- real thread {tid}: " + "; ".join(f"[{k}] {t!r}: {why}" for k, t, why in bad))
    if r["misses"]:
        lines += ["", "Examples of missed perturbations (the changed text in context):", ""]
        for kind, texts in sorted(r["misses"].items()):
            lines += [f"- {kind}: ...{t}..." for t in texts]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=600)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--sample", type=Path, default=Path("/work/shared/data/kaggle_sample"))
    ap.add_argument("--results", type=Path, default=None, help="Write the markdown report here too.")
    args = ap.parse_args()
    r = run(args.threads, args.seed, args.sample)
    text = report(r, "python bench/bench_verify.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.results:
        args.results.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
