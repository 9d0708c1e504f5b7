"""`threadsum verify`: check one summary against one thread file and print the claims."""
from __future__ import annotations

from pathlib import Path

from threadsum.data.types import Thread
from threadsum.errors import InputError


def read_summary(summary: str) -> str:
    """The summary text: ``summary`` itself, or the file it names as ``@FILE``. Raises InputError."""
    text = summary
    if summary.startswith("@"):
        path = Path(summary[1:])
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise InputError(f"cannot read the summary file '{path}' ({exc.strerror or exc}); "
                             f"pass --summary TEXT or @FILE") from None
    if not text.strip():
        raise InputError("the summary is empty; pass --summary TEXT or @FILE")
    return text


def verify_command(thread_path: Path, summary: str, as_json: bool = False) -> None:
    """Print the claims of ``summary`` checked against the thread in ``thread_path`` and what it left
    out of the thread (tables, or JSON ``{"claims": [...], "coverage": {...}}``, see
    ``verify.coverage.coverage_report``). Every email of the file counts as evidence (an .mbox holding several
    threads is checked as one). Unsupported claims are the output, not an error.

    Raises:
        InputError: the thread or summary file cannot be read or parsed, or the summary is empty (exit 2).
    """
    import typer
    from rich.console import Console

    from threadsum.inference.inputs import read_threads
    from threadsum.verify import check, coverage, coverage_report
    from threadsum.verify.render import claims_json, claims_table, left_out_table

    text = read_summary(summary)
    try:
        data = Path(thread_path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the thread file '{thread_path}' ({exc.strerror or exc}); "
                         f"pass an .eml, .mbox, .json or text file") from None
    threads = read_threads(data, str(thread_path))
    merged = Thread(threads[0].thread_id, threads[0].subject, [e for t in threads for e in t.emails])
    claims = check(merged, text)
    covered = coverage_report(coverage(merged, text))
    if as_json:
        typer.echo(claims_json(claims, covered))
    else:
        Console().print(claims_table(claims, text))
        Console().print(left_out_table(covered))
