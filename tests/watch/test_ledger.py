"""The SQLite ledger: output-name reservation, dedupe lookups, counts and statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from medattn.watch.ledger import Ledger


def test_names_are_reserved_per_input_hash(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    a = ledger.start("a.nii.gz", "a", "h1", "w1", "w1/a.nii.gz")
    b = ledger.start("a.nrrd", "a", "h2", "w2", "w2/a.nrrd")  # another input named a while a is open
    assert (a.case_name, b.case_name) == ("a", "a__2")
    ledger.finish(a.id, "done", outputs=["a.nii.gz", "a.json"], attempts=1, timings={"seconds": 0.5})
    again = ledger.start("a.nii.gz", "a", "h1", "w1", "w1/a.nii.gz")  # same content again: same name
    assert again.case_name == "a"
    assert ledger.done_with_hash("h1").id == a.id and ledger.done_with_hash("h2") is None
    ledger.finish(again.id, "duplicate", outputs=["a.nii.gz", "a.json"], duplicate_of=a.id)
    assert ledger.by_claim("w2/a.nrrd").id == b.id
    ledger.adopt(b.id, "w3", "w3/a.nrrd")
    assert ledger.by_claim("w2/a.nrrd") is None and ledger.by_claim("w3/a.nrrd").worker == "w3"
    c = ledger.start("a.mha", "a", "h3", "w1", "w1/a.mha")
    assert c.case_name == "a__3"
    counts = ledger.counts()
    assert (counts["done"], counts["duplicate"], counts["processing"]) == (1, 1, 2)
    assert ledger.rows("done")[0].outputs == ["a.nii.gz", "a.json"]
    assert ledger.rows("done")[0].timings == {"seconds": 0.5}
    with pytest.raises(ValueError, match="final status"):
        ledger.finish(c.id, "processing")
    ledger.close()


def test_two_connections_share_the_ledger(tmp_path: Path) -> None:
    one, two = Ledger(tmp_path), Ledger(tmp_path)
    one.set_meta("inbox", "/data/in")
    r = two.start("x.nii.gz", "x", "h", "w", "w/x.nii.gz")
    assert one.by_claim("w/x.nii.gz").id == r.id and two.meta("inbox") == "/data/in"
    one.finish(r.id, "quarantined", error="bad")
    assert two.counts()["quarantined"] == 1 and two.rows("quarantined")[0].error == "bad"
    one.close()
    two.close()
