"""The README and docs/ stay true to the code: size, links, every command shown, the exit-code table.

Every command line shown in README.md and docs/*.md (fenced code blocks, and inline code that starts
with ``threadsum ``) is parsed against the real command line: the sub-command path must exist, every
``--option`` must belong to that command, and every ``section.key=value`` override must name a config
key. ``make``, ``pip install``, ``curl`` and launcher lines (``torchrun``, ``accelerate launch``,
``python -m torch.distributed.run``, ``python -m threadsum``) are checked for their own part: a Makefile
target, a pyproject extra, a route of the HTTP service, the ``threadsum`` command they start.
Static reads only (no command is run), so the module takes well under a second.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

import threadsum.cli
from threadsum.config import describe_fields
from threadsum.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_BYTES = 10_000


FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"(?<!`)`(threadsum [^`\n]+)`(?!`)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
PLACEHOLDER_KEYS = {"section.key"}  # `section.key=value` written as a pattern, not a real key


@dataclass
class Shown:
    """One command line as shown in a page: where, and its words (continuations joined, comments cut)."""

    page: str
    line: str
    words: list[str]
    inline: bool = False


# ---------------------------------------------------------------- reading the pages


def _outside_fences(text: str) -> str:
    """The page text without fenced code blocks (links and inline code outside them)."""
    return FENCE.sub("", text)


COMMAND_START = re.compile(r"^\s*(\$\s+)?(threadsum|make|pip|curl|torchrun|accelerate|python|python3)\s")
PIPED = re.compile(r"(\||&&|;)\s*threadsum\s")  # `cat x | threadsum summarize - ...`
SEPARATORS = {"|", "||", "&&", ";"}


def _split(line: str) -> list[str] | None:
    """Shell words of a line without its ``$`` prompt and ``#`` comment; None while a quote is open."""
    try:
        return shlex.split(re.sub(r"^\s*\$\s+", "", line), comments=True)
    except ValueError:
        return None


def block_commands(block: str) -> list[tuple[str, list[str]]]:
    """(line, words) of each command in a code block: ``\\`` continuations and quotes spanning lines
    (``curl -d '{...}'``) joined; output, JSON and file trees skipped."""
    lines = block.splitlines()
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not (COMMAND_START.match(line) or PIPED.search(line)):
            continue  # output, JSON, a file tree or a comment
        while i < len(lines) and (line.rstrip().endswith("\\") or _split(line) is None):
            line = (line.rstrip()[:-1] if line.rstrip().endswith("\\") else line + "\n") + lines[i]
            i += 1
        words = _split(line)
        assert words is not None, f"unbalanced quotes in a shown command: {line!r}"
        found.append((" ".join(line.split()), words))
    return found


def shown_commands(page: Path) -> list[Shown]:
    """Every command line of a page: fenced blocks (``$ `` prompts allowed) and inline ``threadsum ...``."""
    text = page.read_text(encoding="utf-8")
    found = [Shown(page.name, line, words) for block in FENCE.findall(text) for line, words in block_commands(block)]
    for span in INLINE.findall(_outside_fences(text)):
        found.append(Shown(page.name, span, shlex.split(span), inline=True))
    return found


ALL_SHOWN = [shown for page in PAGES for shown in shown_commands(page)]


# ---------------------------------------------------------------- the real command line


# typer's underlying click command tree. Recent typer releases vendor click (typer._click), so the
# classes are typer's own: groups are told apart by their `commands`, options by `param_type_name`.
ROOT_COMMAND = typer.main.get_command(threadsum.cli.app)
CONFIG_KEYS = {key for key, _default, _doc in describe_fields()}


def _is_group(cmd) -> bool:
    """Whether a command has sub-commands (``threadsum runs``, ``threadsum sagemaker``)."""
    return hasattr(cmd, "commands")


def _option_names(cmd) -> dict:
    """Every spelling of every option of ``cmd`` (``--help`` included) -> the option."""
    names: dict = {"--help": None}
    for param in cmd.params:
        if param.param_type_name == "option":
            for name in (*param.opts, *param.secondary_opts):
                names[name] = param
    return names


def _takes_value(option) -> bool:
    """Whether the option reads the next word as its value (not a flag such as ``--dry-run``)."""
    return option is not None and not option.is_flag and not option.count


def _word(word: str) -> str:
    """A word without the ``[ ]`` of an optional part in a usage line (``[--split test]``)."""
    return word.strip("[]")


def check_threadsum(words: list[str], complete: bool = True) -> list[str]:
    """Problems with ``threadsum WORDS...`` against the real CLI (an empty list when it parses).

    ``complete=False`` accepts a bare command group (inline prose naming ``threadsum sagemaker``).
    """
    cmd = ROOT_COMMAND
    path = ["threadsum"]
    problems: list[str] = []
    i = 0
    while i < len(words):
        word = _word(words[i])
        i += 1
        if not word or word == "...":
            continue
        if word.startswith("-") and word != "-":
            names = _option_names(cmd)
            name = word.split("=", 1)[0]
            if name not in names:
                problems.append(f"`{' '.join(path)}` has no option {name}")
            elif "=" not in word and _takes_value(names[name]):
                i += 1  # the option's value
            continue
        if _is_group(cmd):
            if word in cmd.commands:
                cmd = cmd.commands[word]
                path.append(word)
                continue
            return problems + [f"`{' '.join(path)}` has no sub-command {word!r}"]
        key = re.match(r"^([a-z_]+(?:\.[a-z_0-9]+)+)=", word)
        if key and key.group(1) not in PLACEHOLDER_KEYS and key.group(1) not in CONFIG_KEYS:
            problems.append(f"override {key.group(1)} is not a config key (threadsum config --show)")
    bare_group = _is_group(cmd) and not cmd.invoke_without_command
    if bare_group and (complete or len(words) == 0):
        problems.append(f"`{' '.join(path)}` needs a sub-command")
    return problems


def _threadsum_part(words: list[str]) -> list[str] | None:
    """The words after ``threadsum`` in a launcher line (``... -m threadsum train ...``), else None."""
    for j in range(len(words) - 1):
        if words[j] == "-m" and words[j + 1] == "threadsum":
            return words[j + 2:]
    return None


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.MULTILINE))


def _extras() -> set[str]:
    import tomllib

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def _service_routes() -> set[str]:
    # the app's own routes and those of the routers it mounts (serve --sagemaker)
    source = "".join((ROOT / "src" / "threadsum" / "serve" / f).read_text(encoding="utf-8")
                     for f in ("app.py", "sagemaker.py"))
    return set(re.findall(r"@(?:app|router)\.(?:get|post|put|delete)\(\s*\"([^\"]+)\"", source)) | {"/docs", "/openapi.json"}


def check_shown(words: list[str], complete: bool = True) -> list[str]:
    """Problems with one shown command line of any form (``complete``: see :func:`check_threadsum`);
    a pipeline or ``&&`` chain is checked command by command."""
    problems: list[str] = []
    start = 0
    for end in [j for j, w in enumerate(words) if w in SEPARATORS] + [len(words)]:
        if words[start:end]:
            problems += check_one(words[start:end], complete)
        start = end + 1
    return problems


def check_one(words: list[str], complete: bool = True) -> list[str]:
    """Problems with one command (no pipes) of any form."""
    head = words[0]
    if head == "threadsum":
        return check_threadsum(words[1:], complete)
    part = _threadsum_part(words)
    if part is not None:
        return check_threadsum(part)
    if head == "make":
        targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
        return [f"no Makefile target {t!r}" for t in targets if t not in _makefile_targets()]
    if head == "pip":
        problems = []
        for word in words[2:]:
            extra = re.match(r"^(?:threadsum|\.)\[([^\]]+)\]$", word)
            if extra:
                problems += [f"no extra [{e}] in pyproject.toml" for e in extra.group(1).split(",") if e not in _extras()]
        return problems
    if head == "curl":
        urls = [w for w in words if re.match(r"^(https?://)?(localhost|127\.0\.0\.1)(:\d+)?/", w)]
        paths = [re.sub(r"^(https?://)?[^/]+", "", u).split("?")[0] for u in urls]
        return [f"the service has no route {p}" for p in paths if p not in _service_routes()]
    return []  # python/accelerate/torchrun lines that do not start threadsum (e.g. `accelerate config`)


# ---------------------------------------------------------------- the tests


def test_readme_fits_on_a_screen() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/ (limit {README_MAX_BYTES})"


README_MAX_BLOCK_COLUMNS = 110


def test_no_wide_pasted_output_in_readme() -> None:
    """Code blocks in the README stay narrow: wide terminal output belongs in docs/, trimmed."""
    blocks = FENCE.findall(README.read_text(encoding="utf-8"))
    wide = [line for block in blocks for line in block.splitlines() if len(line) > README_MAX_BLOCK_COLUMNS]
    assert not wide, f"code lines over {README_MAX_BLOCK_COLUMNS} columns in README.md: {wide[:3]}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(_outside_fences(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_pages_show_commands() -> None:
    """The collector itself finds the commands (so the check below cannot pass on an empty list)."""
    by_page = {page.name: [s for s in ALL_SHOWN if s.page == page.name] for page in PAGES}
    assert len(by_page["README.md"]) >= 10
    for name in ("training.md", "planning.md", "data.md", "serving.md", "evaluation.md", "sagemaker.md", "distributed.md"):
        assert by_page[name], f"docs/{name} shows no command"
    assert any(s.words[0] in {"torchrun", "accelerate", "python"} for s in ALL_SHOWN)


@pytest.mark.parametrize("shown", ALL_SHOWN, ids=lambda s: f"{s.page}:{s.line[:60]}")
def test_shown_command_parses(shown: Shown) -> None:
    problems = check_shown(shown.words, complete=not shown.inline)
    assert not problems, f"{shown.page}: `{shown.line}`: {'; '.join(problems)}"


def _leaf_paths(cmd, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable command path: leaves, and groups that run on their own (``threadsum runs``)."""
    if not _is_group(cmd):
        return [prefix]
    paths = [prefix] if cmd.invoke_without_command and prefix else []
    for name, sub in cmd.commands.items():
        paths += _leaf_paths(sub, (*prefix, name))
    return paths


def _listed(path: tuple[str, ...], row: str) -> bool:
    """``threadsum a b`` is in a table row as itself, or as `b` in a row that starts `threadsum a`."""
    if re.search(rf"`threadsum {' '.join(path)}[` ]", row):
        return True
    return len(path) > 1 and f"`threadsum {' '.join(path[:-1])} " in row and f"`{path[-1]}`" in row


def test_readme_command_table_lists_every_command() -> None:
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `threadsum ")]
    missing = [" ".join(p) for p in _leaf_paths(ROOT_COMMAND) if not any(_listed(p, row) for row in rows)]
    assert not missing, f"README's command table lacks: {missing}"


def _exit_code_table(page: Path) -> dict[int, str]:
    """code -> name from the table under the page's "Exit codes" heading."""
    text = page.read_text(encoding="utf-8")
    section = re.search(r"^## Exit codes\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, f"{page.name} has no '## Exit codes' section"
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`?([A-Z_]+)`?\s*\|", section.group(1), re.MULTILINE)
    return {int(code): name for code, name in rows}


def test_exit_code_table_matches_errors_module() -> None:
    documented = _exit_code_table(ROOT / "docs" / "training.md")
    assert documented == {int(code): code.name for code in ExitCode}


# ---------------------------------------------------------------- the checker itself


@pytest.mark.parametrize("line, expected", [
    ("threadsum train -c configs/tiny.yaml --auto-fit train.lr=1e-4", []),
    ("threadsum train --no-such-option", ["no option --no-such-option"]),
    ("threadsum trian -c x.yaml", ["no sub-command 'trian'"]),
    ("threadsum sagemaker launch -c x.yaml --dry-run --spot", []),
    ("threadsum sagemaker lunch", ["no sub-command 'lunch'"]),
    ("threadsum sagemaker", ["needs a sub-command"]),
    ("threadsum runs report -o EXPERIMENTS.md", []),
    ("threadsum evaluate -c x.yaml [--split test] train.nonsense=1", ["train.nonsense is not a config key"]),
    ("torchrun --nnodes 2 -m threadsum train --nproc-per-node 8", ["no option --nproc-per-node"]),
    ("python -m torch.distributed.run --standalone -m threadsum train -c x.yaml", []),
    ("make demo", []),
    ("cat t.txt | threadsum summarize - -m m --jsn", ["no option --jsn"]),
    ("threadsum prepare -c x.yaml && threadsum tran -c x.yaml", ["no sub-command 'tran'"]),
    ("make deploy", ["no Makefile target 'deploy'"]),
    ("pip install 'threadsum[train,nonesuch]'", ["no extra [nonesuch]"]),
    ("curl -s localhost:8000/v1/summarise", ["no route /v1/summarise"]),
])
def test_checker_catches_drift(line: str, expected: list[str]) -> None:
    problems = check_shown(shlex.split(line))
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected):
        assert fragment in problem


def test_readme_planner_figures_are_what_the_planner_says() -> None:
    """The README's A10G example (bart-large.yaml) is the planner's current answer, not a stale paste."""
    from threadsum.config import load_config
    from threadsum.train.memory import (
        GiB,
        auto_fit,
        fit_options,
        plan_memory,
        resolve_device,
    )

    text = " ".join(README.read_text(encoding="utf-8").split())
    quoted = re.search(
        r"on an A10G \(([\d.]+) GiB\) `bart-large.yaml` as written would peak at a predicted ([\d.]+) GiB, "
        r"so it picks `(train\.max_tokens=\d+)` \(([\d.]+) GiB, ([\d.]+)x speed\), the first of the options", text)
    assert quoted, "README's planner example sentence changed; update this test with it"
    cfg = load_config(ROOT / "configs" / "bart-large.yaml", [])
    device = resolve_device("a10g")
    first = fit_options(cfg, device)[0]
    pick, picked = auto_fit(cfg, device)
    assert pick == first.overrides
    assert quoted.groups() == (
        f"{device.memory_gib:.1f}", f"{plan_memory(cfg, device).peak / GiB:.2f}", " ".join(pick),
        f"{picked.peak / GiB:.2f}", f"{first.speed:.2f}",
    )
