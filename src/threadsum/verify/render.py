"""Claims as text for people: the `threadsum verify` table and its JSON form."""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from threadsum.verify.claims import Claim


def claims_json(claims: Sequence[Claim], coverage: Optional[dict[str, Any]] = None) -> str:
    """``{"claims": [claim.to_dict(), ...], "coverage": coverage_report(...)}`` as one line of JSON
    (UTF-8 kept; "coverage" only when given)."""
    out: dict[str, Any] = {"claims": [c.to_dict() for c in claims]}
    if coverage is not None:
        out["coverage"] = coverage
    return json.dumps(out, ensure_ascii=False)


def left_out_table(coverage: dict[str, Any]):
    """A rich Table of the important facts the summary does not carry (kind, fact, score and why, email #)."""
    from rich.table import Table

    n, left = coverage["important"], coverage["left_out"]
    table = Table(title=f"{n} important facts in the thread, {len(left)} left out of the summary")
    for col in ("kind", "left out", "why it matters", "email #"):
        table.add_column(col)
    for f in left:
        who = f" (owner {f['owner']}" + (f", for {f['addressee']})" if f.get("addressee") else ")") if f.get("owner") else ""
        table.add_row(f["kind"], f["text"][:120] + who, f"{f['score']}: " + ", ".join(f["reasons"]), str(f["email"] + 1))
    return table


def claims_table(claims: Sequence[Claim], summary: str):
    """A rich Table: one row per claim (ok/NOT SUPPORTED, kind, span, evidence or reason)."""
    from rich.table import Table

    bad = sum(not c.supported for c in claims)
    table = Table(title=f"{len(claims)} claims, {bad} not supported by the thread", show_lines=False)
    table.add_column("", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("claim")
    table.add_column("evidence (email #: line) or reason")
    for c in claims:
        if c.supported:
            where = f"#{c.evidence['email'] + 1}: {c.evidence['line']}" if c.evidence else ""
            table.add_row("[green]ok[/green]", c.kind, c.text, where)
        else:
            table.add_row("[bold red]NO[/bold red]", c.kind, f"[red]{c.text}[/red]", c.reason or "")
    return table
