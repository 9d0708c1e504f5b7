"""`threadsum verify`: any thread input, text or @FILE summary, table or JSON, exit 0; bad input exits 2."""
from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from threadsum.cli import app

runner = CliRunner()

PASTED = """From: Ann Smith / To: Bob Jones / Subject: Q3 budget
Bob, can you send the revised Q3 budget by Friday?
From: Bob Jones / To: Ann Smith
Yes, I will send it Thursday after legal signs off.
"""
EML = """From: Kay Mann <kay.mann@enron.com>
To: Reagan Rorschach <reagan.rorschach@enron.com>
Subject: long form confirm/MDEA
Date: Fri, 27 Apr 2001 16:00:00 -0500

Reagan, can you send the confirm to Marvin by Monday? The fee is $45.
"""
JSON_THREAD = {"thread_id": "x", "subject": "Lunch", "emails": [
    {"from": "Carol St Clair", "to": ["Suzanne Adams"], "date": "2000-04-18 04:54:00",
     "body": "Suzanne: please send an e-mail about the lunch on May 5th at noon."}]}


def test_json_output_for_each_input_kind(tmp_path):
    cases = [
        ("thread.txt", PASTED, "Bob asks Ann to send the budget by Friday.", "action"),
        ("mail.eml", EML, "Kay Mann asks Reagan to send the confirm to Marvin by Monday for $60.", "money"),
        ("thread.json", json.dumps(JSON_THREAD), "Carol asks Suzanne to send an e-mail about the lunch on May 12.", "date"),
    ]
    for name, content, summary, bad_kind in cases:
        path = tmp_path / name
        path.write_text(content)
        res = runner.invoke(app, ["verify", "--thread", str(path), "--summary", summary, "--json"])
        assert res.exit_code == 0, res.output
        claims = json.loads(res.output)["claims"]
        assert claims and all({"text", "kind", "supported", "evidence", "start", "end", "reason"} <= set(c) for c in claims)
        assert [c["kind"] for c in claims if not c["supported"]] == [bad_kind], (name, claims)
        assert any(c["supported"] and c["kind"] == "person" for c in claims)
        cov = json.loads(res.output)["coverage"]  # what the summary left out, beside the claims
        assert cov["important"] >= 1 and len(cov["left_out"]) <= cov["important"]
    lunch = tmp_path / "lunch.json"
    lunch.write_text(json.dumps(JSON_THREAD))
    res = runner.invoke(app, ["verify", "--thread", str(lunch), "--summary", "Carol writes to Suzanne.", "--json"])
    left = {f["kind"] for f in json.loads(res.output)["coverage"]["left_out"]}
    assert {"request", "date"} <= left, left


def test_summary_from_file_and_table_output(tmp_path):
    (tmp_path / "t.txt").write_text(PASTED)
    (tmp_path / "s.txt").write_text("Ann asks Bob to send the revised Q3 budget by Friday. Greg Brackett agrees.")
    res = runner.invoke(app, ["verify", "--thread", str(tmp_path / "t.txt"), "--summary", f"@{tmp_path / 's.txt'}"])
    assert res.exit_code == 0, res.output  # unsupported claims are the output, not an error
    assert "not supported by the thread" in res.output and "Greg Brackett" in res.output


def test_bad_input_exits_2_with_one_line(tmp_path):
    (tmp_path / "t.txt").write_text(PASTED)
    (tmp_path / "bad.json").write_text("{not json")
    for args, words in (
        (["--thread", str(tmp_path / "missing.eml"), "--summary", "x"], "cannot read the thread file"),
        (["--thread", str(tmp_path / "t.txt"), "--summary", f"@{tmp_path / 'missing.txt'}"], "cannot read the summary file"),
        (["--thread", str(tmp_path / "t.txt"), "--summary", "  "], "the summary is empty"),
        (["--thread", str(tmp_path / "bad.json"), "--summary", "x"], "not valid JSON"),
    ):
        res = runner.invoke(app, ["verify", *args])
        assert res.exit_code == 2, (args, res.output)
        assert words in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output


def test_console_entry_point_runs_verify(tmp_path):
    (tmp_path / "t.txt").write_text(PASTED)
    out = subprocess.run([sys.executable, "-m", "threadsum", "verify", "--thread", str(tmp_path / "t.txt"),
                          "--summary", "Ann asks Bob to send the budget.", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(c["supported"] for c in json.loads(out.stdout)["claims"])
