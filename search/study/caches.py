"""Which image caches exist, which studies use them, and removing those none uses.

`trainer.cache` names a cache file after the data's contents and the image size; it knows
nothing of studies. Each study therefore records the cache files it reads in its own folder
(``studies/<name>/caches.json``), and each cache gets a small JSON beside it saying what it
holds, so that `hpo cache` can list them and `hpo cache clean` can remove the unused ones. A
cache being built (its ``.tmp.npy`` file, or its lock held) is neither listed nor removed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

USES_FILE = "caches.json"
BUILDING = ".tmp.npy"  # how the file of a cache being built ends (see trainer.cache)
# How a backbone feature cache's name goes on after its image cache's stem: it belongs to that
# image cache (trainer.cache.FEATURES_MARK; repeated here, where torch is not wanted).
FEATURES_MARK = "--features-"


@dataclass(frozen=True)
class CacheEntry:
    """One image cache file and what is known about it."""

    path: Path
    source: str
    size: int | None
    images: int | None
    bytes: int
    last_used: float
    used_by: tuple[str, ...]
    kind: str = "images"  # or "features": a backbone's features of an image cache's images


def record_use(study_folder: Path, cache: Path, *, source: str, size: int, images: int) -> None:
    """Note that the study in ``study_folder`` reads ``cache``; marks the cache as used now."""
    about = _about(cache)
    if not about.exists():
        about.write_text(json.dumps({"source": source, "size": size, "images": images}))
    os.utime(cache)  # its modification time is the "last use" `hpo cache` shows
    uses = study_folder / USES_FILE
    if cache.name in _read_list(uses):
        return
    study_folder.mkdir(parents=True, exist_ok=True)
    # Workers of one study record at once: read, add and replace under a lock, so that none
    # loses another's name and no reader sees half a file.
    with FileLock(uses.with_name(f".{USES_FILE}.lock")):
        names = set(_read_list(uses)) | {cache.name}
        temporary = uses.with_name(f".{USES_FILE}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(sorted(names), indent=1))
        os.replace(temporary, uses)


def list_caches(directory: Path, studies: Path) -> list[CacheEntry]:
    """Every cache file in ``directory``, with the studies under ``studies`` that use it.

    A feature cache is used by the studies that use its image cache.
    """
    users: dict[str, list[str]] = {}
    for uses in sorted(studies.glob(f"*/{USES_FILE}")):
        for name in _read_list(uses):
            users.setdefault(name, []).append(uses.parent.name)
    finished = [p for p in sorted(directory.glob("*.npy")) if not p.name.endswith(BUILDING)]
    return [_entry(path, tuple(users.get(_owner(path).name, ()))) for path in finished]


def remove_unused(entries: Sequence[CacheEntry]) -> list[CacheEntry]:
    """Delete the cache files (and their side files) that no study uses; returns those removed."""
    removed = []
    for entry in (entry for entry in entries if not entry.used_by):
        lock = FileLock(entry.path.with_suffix(".lock"), timeout=0)
        try:
            with lock:  # held while a process builds (or checks) this cache: leave it
                for path in (entry.path, _about(entry.path)):
                    path.unlink(missing_ok=True)
        except Timeout:
            continue
        entry.path.with_suffix(".lock").unlink(missing_ok=True)
        removed.append(entry)
    return removed


def describe_age(seconds_ago: float) -> str:
    """``"3 min ago"``, ``"2 h ago"``, ``"5 days ago"``."""
    for unit, length in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds_ago >= length:
            return f"{seconds_ago // length:.0f} {unit} ago"
    return "just now"


def _owner(path: Path) -> Path:
    """The image cache that ``path`` belongs to: itself, or for features their image cache."""
    stem, mark, _ = path.name.partition(FEATURES_MARK)
    return path.with_name(f"{stem}.npy") if mark else path


def _entry(path: Path, used_by: tuple[str, ...]) -> CacheEntry:
    about = _read_dict(_about(_owner(path)))
    stat = path.stat()
    size = about.get("size")
    return CacheEntry(
        path=path,
        source=str(about.get("source", "?")),
        size=size if isinstance(size, int) else None,
        images=about.get("images") if isinstance(about.get("images"), int) else None,
        bytes=stat.st_size,
        last_used=time.time() - stat.st_mtime,
        used_by=used_by,
        kind="images" if _owner(path) == path else "features",
    )


def _about(cache: Path) -> Path:
    return cache.with_suffix(".json")


def _read_list(path: Path) -> list[str]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _read_dict(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
