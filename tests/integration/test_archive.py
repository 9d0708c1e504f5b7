"""The archive job on a synthetic archive: every thread once, equal to summarizing it alone, counts that
reconcile, kill -9 and rerun, Ray Data equal to local mode, bad inputs in rejects."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from threadsum.archive.job import ArchiveOptions, run_archive  # noqa: E402
from threadsum.archive.layout import JobFolder, read_jsonl  # noqa: E402
from threadsum.archive.sources import ArchiveError  # noqa: E402
from threadsum.data.synth import write_mail_archive  # noqa: E402
from threadsum.inference.summarizer import Summarizer, summarize_command  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
N_THREADS = 150  # 50 per format; more costs ~45 ms a thread (a third generation, two thirds claim checks)
VOLATILE = ("seconds", "shard")  # timing, and the shard id (which depends on the inputs' order)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # a wider init than BART's makes the untrained model's output depend on its input, so a summary
    # given to the wrong thread shows
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny"), overrides={"model.tiny.init_std": 0.3})


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_mail_archive(tmp_path_factory.mktemp("archive"), N_THREADS, seed=3)


@pytest.fixture(scope="module")
def local_run(model_dir, archive, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("job") / "local"
    summary = run_archive(ArchiveOptions([str(p) for p in archive], str(model_dir), out, device="cpu",
                                         shard_size=32, cores=1, progress=False))
    return out, summary


def results(out: Path) -> list[dict]:
    return [r for f in sorted((out / "shards").glob("*.jsonl")) for r in read_jsonl(f)]


def by_key(rows: list[dict]) -> dict[tuple[str, str], dict]:
    keyed = {(r["source"], r["thread_id"]): {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}
    assert len(keyed) == len(rows), "a thread appears twice"
    return keyed


def test_every_thread_once_equal_to_alone(local_run, model_dir, archive):
    out, summary = local_run
    rows = results(out)
    t = summary["threads"]
    assert t == {"input": N_THREADS, "summarized": N_THREADS, "rejected": 0, "rejected_reading": 0,
                 "rejected_summarizing": 0, "by_reason": {}}
    keyed = by_key(rows)
    assert {src for src, _ in keyed} == {str(p.resolve()) for p in archive}
    assert len({r["summary"] for r in rows}) > N_THREADS // 2  # the check below can tell threads apart
    # each thread alone through the Summarizer, read by the same readers
    from threadsum.data.readers import read_source

    summarizer = Summarizer.from_pretrained(str(model_dir), device="cpu")
    alone = {}
    for p in archive:
        for th in read_source(p, require_summary=False).threads:
            r = summarizer.summarize_detailed([th], check_claims=False)[0]
            alone[(str(p.resolve()), th.thread_id)] = (r.summary, r.n_emails, r.truncated)
    assert alone == {k: (v["summary"], v["n_emails"], v["truncated"]) for k, v in keyed.items()}
    # and the whole row (claims included) equals `threadsum summarize FILE --json` on threads alone
    jsonl = next(p for p in archive if p.suffix == ".jsonl")
    for n, line in enumerate(jsonl.read_text().splitlines()[:3]):
        single = out.parent / f"single-{n}.json"
        single.write_text(line)
        buf = _Capture()
        summarize_command(str(model_dir), str(single), as_json=True, device="cpu", out=buf, err=_Capture())
        printed = json.loads(buf.text)
        row = keyed[(str(jsonl.resolve()), printed["thread_id"])]
        assert {k: v for k, v in row.items() if k != "source"} == printed
    # Parquet copy holds the same rows; the manifest records hashes, model and settings
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(sorted((out / "shards").glob("*.parquet"))[0])
    assert table.column("summary").to_pylist() == [r["summary"] for r in read_jsonl(sorted((out / "shards").glob("*.jsonl"))[0])]
    manifest = JobFolder(out).read_manifest()
    assert len(manifest["files"]) == 2 + len(list(next(p for p in archive if p.is_dir()).iterdir()))
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    assert manifest["settings"]["generation"]["max_new_tokens"] == 16 and len(manifest["model"]["sha256"]) == 64


class _Capture:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_resume_does_nothing_and_changes_are_refused(local_run, model_dir, archive):
    out, _ = local_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    again = run_archive(ArchiveOptions([str(p) for p in archive], str(model_dir), out, device="cpu", progress=False))
    assert again["shards"]["run"] == 0 and again["threads"]["summarized"] == N_THREADS
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    with pytest.raises(ArchiveError, match=r"setting generation.num_beams: 1 -> 2.*--restart"):
        run_archive(ArchiveOptions([str(p) for p in archive], str(model_dir), out, device="cpu", progress=False,
                                   overrides=["eval.generation.num_beams=2"]))
    with pytest.raises(ArchiveError, match="shard size: 32 -> 7"):
        run_archive(ArchiveOptions([str(p) for p in archive], str(model_dir), out, shard_size=7, progress=False))


def _kill_when(args: ArchiveOptions, ready, timeout: float = 120) -> None:
    """Run the job in a forked child (torch and the readers are already imported: no start-up to pay)
    and SIGKILL it once ``ready()``."""
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=run_archive, args=(args,))
    proc.start()
    deadline = time.monotonic() + timeout
    while not ready() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.is_alive(), f"the run ended (exit {proc.exitcode}) before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL


def test_kill_9_then_rerun_gives_every_thread_once(local_run, model_dir, archive, tmp_path):
    ref_out, _ = local_run
    jsonl = next(p for p in archive if p.suffix == ".jsonl")  # 50 threads: 7 shards of 8
    out = tmp_path / "killed"
    opts = ArchiveOptions([str(jsonl)], str(model_dir), out, device="cpu", shard_size=8, cores=1, progress=False)
    shards = lambda: list((out / "shards").glob("*.jsonl")) if (out / "shards").is_dir() else []  # noqa: E731
    tmp_files = lambda: list(out.rglob(".*.tmp-*"))  # noqa: E731
    # killed 1: before any shard (folder locked: reading, hashing or loading the model), 2: while a shard's
    # file is being written, 3: between shards, some shards later
    _kill_when(opts, lambda: (out / ".lock").exists())
    assert not shards()
    _kill_when(opts, lambda: bool(tmp_files()) or len(shards()) >= 2)
    n_before = len(shards())
    _kill_when(opts, lambda: len(shards()) >= n_before + 2)
    partial = {p.name for p in shards()}
    assert 2 <= len(partial) < 7
    # the rerun is the real command line, in a new process
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    final = subprocess.run([sys.executable, "-m", "threadsum", "summarize", str(jsonl), "-m", str(model_dir),
                            "--out", str(out), "--device", "cpu", "--cores", "1"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    assert "threads: 50 input = 50 summarized + 0 rejected" in final.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards"] == {"total": 7, "run": 7 - len(partial)}
    expected = {k: v for k, v in by_key(results(ref_out)).items() if k[0] == str(jsonl.resolve())}
    assert by_key(results(out)) == expected
    assert not tmp_files()


def test_ray_local_equals_local_mode(local_run, model_dir, archive, tmp_path):
    pytest.importorskip("ray")
    ref_out, _ = local_run
    inputs = [p for p in archive if p.suffix == ".jsonl"]  # Ray sees threads, not files: one format will do
    out = tmp_path / "ray"
    summary = run_archive(ArchiveOptions([str(p) for p in inputs], str(model_dir), out, device="cpu", shard_size=13,
                                         ray="local", cores=1, actors=2, progress=False))
    assert summary["run"]["mode"] == "ray:local" and summary["run"]["actors"] >= 1
    assert summary["threads"]["summarized"] == summary["threads"]["input"] == N_THREADS // 3
    sources = {str(p.resolve()) for p in inputs}
    expected = {k: v for k, v in by_key(results(ref_out)).items() if k[0] in sources}
    assert by_key(results(out)) == expected


def test_bad_inputs_land_in_rejects(model_dir, tmp_path, capsys):
    bad = tmp_path / "mixed"
    (bad / "eml").mkdir(parents=True)
    good = {"from": "Ann <ann@example.com>", "to": ["bob@example.com"], "date": "2001-05-14 09:12:00",
            "body": "Can you send the revised Q3 budget by Friday? The board meets on Monday."}
    (bad / "threads.jsonl").write_text("\n".join(json.dumps(t) for t in [
        {"thread_id": "ok", "subject": "Q3 budget", "emails": [good]},
        {"thread_id": "no-emails", "subject": "empty", "emails": []},
        {"thread_id": "footer-only", "subject": "hi", "emails": [dict(good, body="Sent from my BlackBerry")]},
    ]) + "\n")
    (bad / "eml" / "noise.eml").write_bytes(bytes(range(256)) * 40)  # undecodable: binary
    (bad / "eml" / "reply.eml").write_bytes(b"From: Bob <bob@example.com>\nTo: ann@example.com\nSubject: Re: Q3\n"
                                            b"Date: Mon, 14 May 2001 10:00:00 +0000\nMessage-ID: <r1@x>\n\n"
                                            b"I will send the budget on Thursday.\n")
    (bad / "notes.docx").write_bytes(b"PK\x03\x04 not a mail format")
    broken = tmp_path / "broken.mbox"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    out = tmp_path / "job"
    from typer.testing import CliRunner

    from threadsum.cli import app

    res = CliRunner().invoke(app, ["summarize", str(bad), str(broken), "-m", str(model_dir), "--out", str(out),
                                   "--device", "cpu", "--cores", "1"])
    assert res.exit_code == 0, res.output
    assert "threads: 4 input = 2 summarized + 2 rejected (1 when reading, 1 when summarizing" in res.output
    assert "not read: 2 file(s), 1 email(s)" in res.output
    rejects = read_jsonl(out / "rejects.jsonl")
    got = {(r["level"], r["reason"], Path(r["source"]).name, r.get("thread_id")) for r in rejects}
    assert got == {("thread", "thread_without_valid_emails", "threads.jsonl", "no-emails"),
                   ("thread", "nothing_to_summarize", "threads.jsonl", "footer-only"),
                   ("email", "binary_file", "noise.eml", None),
                   ("file", "unsupported_file", "notes.docx", None),
                   ("file", "unreadable_file", "broken.mbox", None)}
    assert all(r["detail"] for r in rejects)
    done = {r["thread_id"] for r in results(out)}
    assert done == {"ok", "r1@x"}
