"""Content fingerprints of files and directories, for provenance and checkpoint identity."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_WHOLE_FILE_LIMIT = 64 * 2**20
_EDGE = 2**20


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_fingerprint(path: Path) -> str:
    """Whole-file SHA-256 up to 64 MiB; beyond that size + first and last MiB.

    Paper-scale checkpoints are tens of GB; hashing them on every job would cost minutes while a
    changed safetensors file still changes its size or edges in practice.
    """
    size = path.stat().st_size
    if size <= _WHOLE_FILE_LIMIT:
        return file_sha256(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_EDGE))
        handle.seek(size - _EDGE)
        digest.update(handle.read(_EDGE))
    return "edges:" + digest.hexdigest()


def fingerprint(path: str | os.PathLike) -> str:
    """Fingerprint of a file, or of a directory tree (relative names + file fingerprints)."""
    path = Path(path)
    if path.is_file():
        return _file_fingerprint(path)
    if not path.is_dir():
        raise FileNotFoundError(f"cannot fingerprint {path}: no such file or directory")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(_file_fingerprint(file).encode())
    return digest.hexdigest()


def code_digest() -> str:
    """Fingerprint of this package's Python source: results that are reused across runs carry it, so a
    code change never reuses a result the old code made."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for file in sorted(package.rglob("*.py")):
        digest.update(str(file.relative_to(package)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()
