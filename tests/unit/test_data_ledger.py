"""The prepare ledger: counts come from the recorded rejects and warnings, and reconcile."""
from types import SimpleNamespace

import pytest

from threadsum.data.ledger import Ledger, ReconcileError


def _thread(n_emails, summary="s"):
    return SimpleNamespace(emails=[object()] * n_emails, summary=summary)


def test_counts_derive_from_the_records_and_reconcile():
    led = Ledger()
    led.inputs.update(email=7, thread=3, summary=3)
    led.reject("thread", "empty_after_cleaning", "no text", "f.csv", thread_id="2", n_emails=2)
    led.reject("email", "duplicate_email", "dup", "f.csv", thread_id="1")
    led.warn("body_cut_to_max_chars", "cut", "f.csv", line=4)
    led.add_warnings([{"reason": "unique_text_removed", "detail": "x"}])
    c = led.reconciled([_thread(3), _thread(1, summary=None)])
    assert c["emails"] == {"input": 7, "kept": 4, "rejected": 3,
                           "by_reason": {"thread_rejected:empty_after_cleaning": 2, "duplicate_email": 1}}
    assert c["threads"]["kept"] == 2 and c["threads"]["rejected"] == 1
    # the rejected thread's summary and the kept thread without one leave two summary rows unpaired
    assert c["summaries"] == {"input": 3, "kept": 1, "rejected": 0, "unpaired": 2, "by_reason": {}}
    assert c["warnings"] == {"body_cut_to_max_chars": 1, "unique_text_removed": 1}


def test_an_unrecorded_loss_is_a_reconcile_error():
    led = Ledger()
    led.inputs.update(email=5, thread=2, summary=2)
    with pytest.raises(ReconcileError, match="emails: input 5 != kept 4"):
        led.reconciled([_thread(3), _thread(1)])


def test_merged_keeps_order_and_sums_inputs():
    a, b = Ledger(), Ledger()
    a.reject("file", "empty_file", "empty", "a.csv")
    b.warn("missing_date", "no date", "b.eml")
    led = Ledger.merged([(a.rejects, a.warnings, {"emails": {"input": 2}, "threads": {"input": 1}}),
                         (b.rejects, b.warnings, {"emails": {"input": 3}, "threads": {"input": 2},
                                                  "summaries": {"input": 1}})])
    assert [r["reason"] for r in led.rejects] == ["empty_file"] and led.warnings[0]["source"] == "b.eml"
    assert dict(led.inputs) == {"email": 5, "thread": 3, "summary": 1}
