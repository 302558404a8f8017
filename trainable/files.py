"""Atomic file writes: a reader, a crash or a kill sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def temp_beside(path: Path) -> Path:
    """A temporary name beside ``path`` that no other writer uses: two processes writing one file at once
    (two reruns, two analyses) must each replace it whole, never write into one shared temporary."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def temps_beside(path: Path) -> list[Path]:
    """Every ``temp_beside`` name of ``path`` there now: what writers killed mid-write left (or one writing now)."""
    return list(path.parent.glob(f".{path.name}.*.tmp"))


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Replace ``path`` with what ``write(tmp)`` writes to a temporary beside it (same folder, so the rename is
    atomic). A failed write (a full disk) leaves the old file and no temporary."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hotdog-tune"
