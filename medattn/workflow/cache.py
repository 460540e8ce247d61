"""Content hashes, stage cache keys and the stamp each finished stage leaves in its output folder.

A stage's cache key is the SHA-256 of (its kind and configuration — for train the fully resolved
config —, the content hash of every input file or folder, the medattn version). A finished stage's
output folder holds a stamp, ``.medattn-stage.json``, with that key and its parts; because the stamp
is written into the temporary folder before the rename, an output folder with a stamp is always a
complete one. A stage is up to date when its output folder's stamp has the key computed now.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from medattn import __version__
from medattn.errors import MedattnError

__all__ = ["STAMP", "canonical_hash", "change_reason", "config_difference", "read_stamp", "sha256_path", "stage_key"]

STAMP = ".medattn-stage.json"
_CHUNK = 1 << 20


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's tree (relative paths + file hashes, sorted).

    The stage stamp is left out of a folder's hash, so a stage output hashes the same whether or not
    it has been stamped. Raises MedattnError naming the path if it does not exist.
    """
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    if not path.is_dir():
        raise MedattnError("no such file or folder", path)
    h = hashlib.sha256(b"folder\0")
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.name == STAMP or not p.is_file():
            continue
        h.update(f"{rel}\0{_file_sha256(p)}\0".encode())
    return h.hexdigest()


def canonical_hash(data: Any) -> str:
    """SHA-256 of ``data`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def stage_key(config_hash: str, input_hashes: dict[str, str], version: str = __version__) -> str:
    """The cache key of a stage from its configuration hash, input content hashes and medattn version."""
    return canonical_hash({"config": config_hash, "inputs": input_hashes, "medattn": version})


def read_stamp(folder: str | Path) -> dict[str, Any] | None:
    """The stamp of a finished stage output folder, or None (no folder, no stamp, unreadable stamp)."""
    try:
        data = json.loads((Path(folder) / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("key"), str) else None


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, val in data.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def config_difference(old: Any, new: Any) -> str:
    """The first setting that differs between two stage configurations: ``"key: old → new"`` ("" if none)."""
    a, b = (_flat(json.loads(json.dumps(x, default=str))) for x in (old, new))  # tuples → lists, as stored
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            name = key.removeprefix("params.").removeprefix("config.")
            return f"{name}: {a.get(key, '<unset>')!r} → {b.get(key, '<unset>')!r}"
    return ""


def change_reason(stamp: dict[str, Any], config: dict[str, Any], input_hashes: dict[str, str]) -> str:
    """Why a stage whose last run left ``stamp`` must run again (the first difference found)."""
    if stamp.get("medattn_version") != __version__:
        return f"medattn version changed ({stamp.get('medattn_version')} → {__version__})"
    if stamp.get("config_hash") != canonical_hash(config):
        diff = config_difference(stamp.get("config", {}), config)
        return f"its configuration changed ({diff})" if diff else "its configuration changed"
    old = stamp.get("inputs", {})
    for name, digest in input_hashes.items():
        if old.get(name, {}).get("sha256") != digest:
            return f"input {name!r} changed"
    if set(old) != set(input_hashes):
        return "its inputs changed"
    return "its cache key changed"
