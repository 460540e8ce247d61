"""Content hashes, cache keys, stamps and change reasons."""

from __future__ import annotations

import hashlib

from medattn import __version__
from medattn.workflow.cache import (
    STAMP,
    canonical_hash,
    change_reason,
    config_difference,
    read_stamp,
    sha256_path,
    stage_key,
)


def test_file_hash_is_sha256_of_its_bytes(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"medattn")
    assert sha256_path(tmp_path / "a.txt") == hashlib.sha256(b"medattn").hexdigest()


def test_folder_hash_follows_content_and_names_but_not_the_stamp(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("1")
    (d / "sub" / "b.txt").write_text("2")
    h = sha256_path(d)
    (d / STAMP).write_text('{"key": "x"}')
    assert sha256_path(d) == h
    (d / "sub" / "b.txt").write_text("3")
    assert sha256_path(d) != h
    (d / "sub" / "b.txt").write_text("2")
    assert sha256_path(d) == h
    (d / "sub" / "b.txt").rename(d / "sub" / "c.txt")
    assert sha256_path(d) != h


def test_key_changes_with_each_part():
    base = stage_key("c", {"x": "1"})
    assert base == stage_key("c", {"x": "1"}, __version__)
    assert len({base, stage_key("c2", {"x": "1"}), stage_key("c", {"x": "2"}), stage_key("c", {"x": "1"}, "9")}) == 4


def test_read_stamp(tmp_path):
    assert read_stamp(tmp_path / "missing") is None
    (tmp_path / STAMP).write_text("{not json")
    assert read_stamp(tmp_path) is None
    (tmp_path / STAMP).write_text('{"key": "abc"}')
    assert read_stamp(tmp_path) == {"key": "abc"}


def test_change_reasons_name_the_difference():
    config = {"kind": "train", "params": {}, "config": {"train": {"epochs": 3, "patch_size": (16, 16, 8)}}}
    stamp = {"medattn_version": __version__, "config_hash": canonical_hash(config), "config": config,
             "inputs": {"dataset": {"sha256": "a"}}}
    assert change_reason(stamp, config, {"dataset": "b"}) == "input 'dataset' changed"
    changed = {**config, "config": {"train": {"epochs": 5, "patch_size": (16, 16, 8)}}}
    assert change_reason(stamp, changed, {"dataset": "a"}) == "its configuration changed (train.epochs: 3 → 5)"
    assert change_reason({**stamp, "medattn_version": "0.0.1"}, config, {"dataset": "a"}) == (
        f"medattn version changed (0.0.1 → {__version__})")
    assert config_difference({"params": {"a": 1}}, {"params": {"a": 1, "b": 2}}) == "b: '<unset>' → 2"
