"""Claims as text for people: the `threadsum verify` table and its JSON form."""
from __future__ import annotations

import json
from typing import Sequence

from threadsum.verify.claims import Claim


def claims_json(claims: Sequence[Claim]) -> str:
    """``{"claims": [claim.to_dict(), ...]}`` as one line of JSON (UTF-8 kept)."""
    return json.dumps({"claims": [c.to_dict() for c in claims]}, ensure_ascii=False)


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
