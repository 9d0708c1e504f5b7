"""The archive job on an s3:// prefix against moto's server (real HTTP on 127.0.0.1, real boto3): the
same threads, results, rejects and counts as the same bytes in local files, a rerun that skips
finished shards, a changed object refused, and one-line errors for what S3 or boto3 refuse."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from moto.server import ThreadedMotoServer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from threadsum.archive.job import ArchiveOptions, run_archive  # noqa: E402
from threadsum.archive.layout import JobFolder, read_jsonl  # noqa: E402
from threadsum.archive.sources import ArchiveError  # noqa: E402
from threadsum.cli import app  # noqa: E402
from threadsum.data.synth import write_mail_archive  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir  # noqa: E402

REGION = "us-east-1"
BUCKET = "threadsum-archive"
VOLATILE = ("source", "seconds", "shard")  # where a row came from differs by design; timing; shard ids


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # a wide init makes the untrained model's output depend on its input (a summary given to the
    # wrong thread shows), as in test_archive.py
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny"), overrides={"model.tiny.init_std": 0.3})


@pytest.fixture(scope="module")
def s3():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        # fake credentials; botocore sends S3 calls to the moto server through AWS_ENDPOINT_URL
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
                     "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client
    server.stop()


@pytest.fixture(scope="module")
def corpus(s3, tmp_path_factory):
    """The same objects under s3://BUCKET/mail/ and in a local folder, and one more local file.

    12 JSONL threads: 4 in mail/a.jsonl, 4 in mail/sub/b.jsonl, 4 in local.jsonl; and what must be
    rejected: mail/bad.jsonl (a line cut short, a line of bytes that are not UTF-8 nor JSON),
    mail/empty.jsonl (blank), mail/notes.txt (no reader for S3); mail/.hidden.jsonl and a folder
    marker are skipped, as hidden files are in a folder."""
    root = tmp_path_factory.mktemp("corpus")
    jsonl = next(p for p in write_mail_archive(root / "synth", 36, seed=5) if p.suffix == ".jsonl")
    lines = jsonl.read_bytes().splitlines(keepends=True)
    assert len(lines) == 12
    objects = {"a.jsonl": b"".join(lines[0:4]), "sub/b.jsonl": b"".join(lines[4:8]),
               "bad.jsonl": b'{"thread_id": "cut", "emails": [\n' + bytes(range(0x80, 0x100)) + b"\n",
               "empty.jsonl": b"  \n\n", "notes.txt": b"a note that is not a thread\n"}
    local = root / "mail"
    for key, data in objects.items():
        s3.put_object(Bucket=BUCKET, Key=f"mail/{key}", Body=data)
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(data)
    s3.put_object(Bucket=BUCKET, Key="mail/.hidden.jsonl", Body=lines[0])
    s3.put_object(Bucket=BUCKET, Key="mail/folder/", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="mailbox/other.jsonl", Body=lines[0])  # a sibling prefix, not under mail/
    extra = root / "local.jsonl"
    extra.write_bytes(b"".join(lines[8:12]))
    return {"local": local, "extra": extra, "lines": lines}


def _opts(inputs, model_dir, out, **kw) -> ArchiveOptions:
    return ArchiveOptions([str(i) for i in inputs], str(model_dir), out, device="cpu", shard_size=3, cores=1,
                          progress=False, **kw)


@pytest.fixture(scope="module")
def runs(corpus, model_dir, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    jobs = tmp_path_factory.mktemp("jobs")
    s3_out, local_out = jobs / "s3", jobs / "local"
    on_s3 = run_archive(_opts([f"s3://{BUCKET}/mail", corpus["extra"]], model_dir, s3_out))
    on_disk = run_archive(_opts([corpus["local"], corpus["extra"]], model_dir, local_out))
    return (s3_out, on_s3), (local_out, on_disk)


def _rows(out: Path) -> list[dict]:
    return [r for f in sorted((out / "shards").glob("*.jsonl")) for r in read_jsonl(f)]


def _by_thread(out: Path) -> dict[str, dict]:
    rows = _rows(out)
    keyed = {r["thread_id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}
    assert len(keyed) == len(rows), "a thread appears twice"
    return keyed


def test_s3_prefix_and_a_local_file_equal_the_same_local_files(runs, corpus):
    (s3_out, on_s3), (local_out, on_disk) = runs
    # every thread once, the same summaries as from local files
    assert on_s3["threads"] == on_disk["threads"]
    assert on_s3["threads"]["input"] == 12 + 2  # the 12 threads and the two lines of bad.jsonl
    assert on_s3["threads"]["summarized"] == 12
    got, expected = _by_thread(s3_out), _by_thread(local_out)
    assert got == expected and len(got) == 12
    assert len({r["summary"] for r in got.values()}) > 6  # the check above can tell threads apart
    by_source = {}
    for r in _rows(s3_out):
        by_source.setdefault(r["source"], set()).add(r["thread_id"])
    assert {k: len(v) for k, v in by_source.items()} == {
        f"s3://{BUCKET}/mail/a.jsonl": 4, f"s3://{BUCKET}/mail/sub/b.jsonl": 4, str(corpus["extra"].resolve()): 4}
    # the same rejects, with the objects' URIs as sources, and counts that reconcile
    assert on_s3["emails"] == on_disk["emails"] and on_s3["files"] == on_disk["files"]
    assert on_s3["files"] == {"input": 6, "rejected": 2, "by_reason": {"empty_file": 1, "unsupported_file": 1}}

    def rejects(out: Path) -> set[tuple]:
        return {(r["stage"], r["level"], r["reason"], r["source"].rsplit("/", 1)[-1], r["line"])
                for r in read_jsonl(out / "rejects.jsonl")}

    assert rejects(s3_out) == rejects(local_out) == {
        ("read", "thread", "invalid_json", "bad.jsonl", 1), ("read", "thread", "invalid_json", "bad.jsonl", 2),
        ("read", "file", "empty_file", "empty.jsonl", None), ("read", "file", "unsupported_file", "notes.txt", None)}
    assert {r["source"] for r in read_jsonl(s3_out / "rejects.jsonl")} == {
        f"s3://{BUCKET}/mail/{k}" for k in ("bad.jsonl", "empty.jsonl", "notes.txt")}
    # the manifest records each object by its ETag and size, each local file by its sha256
    files = {f["path"]: f for f in JobFolder(s3_out).read_manifest()["files"]}
    assert sorted(files) == sorted([f"s3://{BUCKET}/mail/{k}" for k in
                                    ("a.jsonl", "sub/b.jsonl", "bad.jsonl", "empty.jsonl", "notes.txt")]
                                   + [str(corpus["extra"].resolve())])
    a = files[f"s3://{BUCKET}/mail/a.jsonl"]
    assert a["bytes"] == len(b"".join(corpus["lines"][0:4])) and a["etag"].strip('"')
    assert len(files[str(corpus["extra"].resolve())]["sha256"]) == 64


def test_rerun_skips_finished_shards_and_a_changed_object_is_refused(runs, corpus, model_dir, s3):
    (s3_out, _), _ = runs
    inputs = [f"s3://{BUCKET}/mail/", corpus["extra"]]  # the trailing slash names the same prefix
    before = {p.name: p.stat().st_mtime_ns for p in (s3_out / "shards").iterdir()}
    again = run_archive(_opts(inputs, model_dir, s3_out))
    assert again["shards"]["run"] == 0 and again["threads"]["summarized"] == 12
    assert {p.name: p.stat().st_mtime_ns for p in (s3_out / "shards").iterdir()} == before
    s3.put_object(Bucket=BUCKET, Key="mail/sub/b.jsonl", Body=b"".join(corpus["lines"][4:7]))  # a thread less
    try:
        with pytest.raises(ArchiveError, match=rf"1 input file\(s\) changed: s3://{BUCKET}/mail/sub/b.jsonl.*--restart"):
            run_archive(_opts(inputs, model_dir, s3_out))
    finally:
        s3.put_object(Bucket=BUCKET, Key="mail/sub/b.jsonl", Body=b"".join(corpus["lines"][4:8]))


def test_a_single_object_is_an_input_too(runs, corpus, model_dir, tmp_path):
    (s3_out, _), _ = runs
    summary = run_archive(_opts([f"s3://{BUCKET}/mail/sub/b.jsonl"], model_dir, tmp_path / "one"))
    assert summary["threads"]["summarized"] == 4 and summary["files"]["input"] == 1
    ids = {str(json.loads(line)["thread_id"]) for line in corpus["lines"][4:8]}
    assert _by_thread(tmp_path / "one") == {k: v for k, v in _by_thread(s3_out).items() if k in ids}


def _cli(model_dir, out, *inputs):
    res = CliRunner().invoke(app, ["summarize", *inputs, "-m", str(model_dir), "--out", str(out), "--device", "cpu"])
    return res.exit_code, res.output.strip()


def test_what_s3_refuses_is_one_line_exit_2(s3, corpus, model_dir, tmp_path, monkeypatch):
    code, out = _cli(model_dir, tmp_path / "a", "s3://no-such-bucket-here/mail")
    assert code == 2 and "bucket 'no-such-bucket-here' does not exist" in out and "Traceback" not in out
    assert len(out.splitlines()) == 1
    code, out = _cli(model_dir, tmp_path / "b", f"s3://{BUCKET}/nothing/here")
    assert code == 2 and f"'s3://{BUCKET}/nothing/here' holds no objects" in out and len(out.splitlines()) == 1
    code, out = _cli(model_dir, tmp_path / "c", "s3://Not_A_Bucket/x")
    assert code == 2 and "is not a valid S3 URI" in out and len(out.splitlines()) == 1
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, out = _cli(model_dir, tmp_path / "d", f"s3://{BUCKET}/mail")
    assert code == 2 and "no AWS credentials found" in out and len(out.splitlines()) == 1
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if boto3 were not installed
    code, out = _cli(model_dir, tmp_path / "e", f"s3://{BUCKET}/mail")
    assert code == 2 and "pip install 'threadsum[cloud]'" in out and len(out.splitlines()) == 1
    assert not any((tmp_path / d).exists() for d in "abcde")  # refused before any job folder was made


def test_an_object_overwritten_after_the_listing_is_not_read(s3, corpus):
    from threadsum.archive.sources import check_inputs, read_archive

    key = "changing/a.jsonl"
    s3.put_object(Bucket=BUCKET, Key=key, Body=corpus["lines"][0])
    listed = check_inputs([f"s3://{BUCKET}/changing"], s3)
    assert [o.key for o in listed[0].objects] == [key]
    assert len(read_archive(listed, 4000, s3).units[0][1].threads) == 1
    s3.put_object(Bucket=BUCKET, Key=key, Body=corpus["lines"][1])  # a new ETag since the listing
    with pytest.raises(ArchiveError, match=rf"s3://{BUCKET}/{key} changed while the job was reading it"):
        read_archive(listed, 4000, s3)
