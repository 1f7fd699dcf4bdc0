"""Atomic file and directory publication: readers see the old version or the new, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from upath import UPath


def publish_directory(staging: Path, target: Path, replace: bool = False) -> None:
    """Rename a fully written ``staging`` directory to ``target``.

    Without ``replace``, a ``target`` that appeared meanwhile (another process built the same
    immutable thing) wins and ``staging`` is discarded. With ``replace``, the old ``target`` is
    moved aside first and removed after the swap.
    """
    target = Path(target)
    if replace and target.exists():
        retired = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
        return
    try:
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def put_object(target: UPath, data: bytes) -> None:
    """Write ``data`` to an fsspec location (``s3://``, ``gs://``, ``file://``, ``memory://``…) so
    readers never see half of it: written beside the target, then moved onto it (a rename on file
    systems; on object stores a server-side copy, and every object write is all-or-nothing)."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}")
    temporary.parent.mkdir(parents=True, exist_ok=True)  # a no-op on object stores
    temporary.write_bytes(data)
    target.fs.mv(temporary.path, target.path)
