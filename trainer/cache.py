"""Decode every image once per (dataset contents, image size) into a uint8 ``.npy`` on disk.

Every trial, fold, epoch and worker process then memory-maps the same file read-only, so the
per-epoch cost is augmentation of arrays, never JPEG decoding. The file name carries a key over
the table's `content_id`, each file's modification time, the image size, a format version and
the decoder (`trainer.images.decoder_key`): editing, replacing or touching an image, or a change
to how images are decoded, gives a new key and therefore a fresh build.

Builds are safe to race: a lock file serialises builders of the same key on one machine (the
second waits, then reuses), and the result appears only through an atomic rename.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from trainer.cpus import cpu_count
from trainer.errors import DataError
from trainer.images import decode_image, decoder_key, resize_array, unreadable_reason
from trainer.sources import ImageTable

FORMAT_VERSION = 1
FEATURES_MARK = "--features-"
"""Backbone feature caches (`trainer.features`) are named ``<image cache stem>--features-...``:
they belong to that image cache, and ``hpo cache`` lists and cleans them with it."""
_CHUNK_MIN, _CHUNK_MAX = 16, 256
_SMALL = 200  # fewer files than this decode in-process
_FIRST_FEW = 3

Failure = tuple[int, str]  # (sample index, reason)


@dataclass(frozen=True, eq=False)
class CachedImages:
    """Decoded, resized pixels of a whole dataset plus its labels.

    Attributes:
        images: (N, size, size, 3) uint8, memory-mapped read-only.
        labels: (N,) int64 index into ``classes``.
        classes: Class names; the index is the label id.
        groups: Group id per sample as a str array, or None.
        decoded: Images decoded to produce this object (0 when the cache was reused).
        path: The ``.npy`` file backing ``images``.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    groups: np.ndarray | None
    decoded: int
    path: Path | None

    def __len__(self) -> int:
        return len(self.labels)

    def __reduce__(self) -> tuple:
        # Pickling a memmap copies every pixel; DataLoader workers started with "spawn" would
        # each receive the whole dataset. Reopening the file keeps them light and shared.
        rest = (self.labels, self.classes, self.groups, self.decoded, self.path)
        if isinstance(self.images, np.memmap) and self.path is not None:
            return (_reopen, rest)
        return (CachedImages, (self.images, *rest))


def _reopen(
    labels: np.ndarray,
    classes: tuple[str, ...],
    groups: np.ndarray | None,
    decoded: int,
    path: Path,
) -> CachedImages:
    return CachedImages(np.load(path, mmap_mode="r"), labels, classes, groups, decoded, path)


def cache_dir() -> Path:
    """The folder for image caches: ``$HPO_CACHE_DIR``, else ``studies/cache`` (absolute)."""
    configured = os.environ.get("HPO_CACHE_DIR")
    return Path(configured or "studies/cache").expanduser().absolute()


def cached_images(
    table: ImageTable,
    size: int,
    *,
    directory: Path | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
) -> CachedImages:
    """Return the dataset's pixels at ``size x size``, decoding only if no valid cache exists.

    Args:
        table: The dataset, from `trainer.sources.load_table`.
        size: Side of the square images in pixels.
        directory: Where cache files live; defaults to `cache_dir()`.
        n_jobs: Decoding processes; None uses every core.
        progress: Show a progress bar on stderr while decoding.

    Returns:
        The cached images, memory-mapped read-only, with labels, classes and groups.

    Raises:
        DataError: Some images cannot be read (all are listed by count, the first by name),
            a file vanished since the table was loaded, or the cache folder is not writable.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, not {size}.")
    folder = Path(directory).absolute() if directory is not None else cache_dir()
    target = folder / cache_file_name(table, size)
    shape = (len(table), size, size, 3)
    images, decoded = _load(target, shape), 0
    if images is None:
        _make_folder(folder)
        with FileLock(target.with_suffix(".lock")):
            images = _load(target, shape)  # another process may have built it while we waited
            if images is None:
                _build(table, size, target, n_jobs=n_jobs, progress=progress)
                images, decoded = _load(target, shape), len(table)
    return CachedImages(images, table.labels, table.classes, table.groups, decoded, target)


def cache_file_name(table: ImageTable, size: int) -> str:
    """The cache file's name for ``table`` at ``size``; changes with any file or the decoder."""
    key = f"v{FORMAT_VERSION}/{decoder_key()}/{table.content_id}/{size}"
    digest = hashlib.sha256(key.encode())
    if table.root is not None:
        for i in range(len(table)):
            digest.update(b"%d," % _mtime_ns(table, i))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(table.source.rstrip("/\\")).name)[:40]
    return f"{slug or 'data'}-{size}px-{digest.hexdigest()[:20]}.npy"


def _mtime_ns(table: ImageTable, i: int) -> int:
    try:
        return table.file(i).stat().st_mtime_ns
    except FileNotFoundError as exc:
        raise DataError(
            f"{table.file(i)} was removed after {table.source} was listed; run the command again."
        ) from exc


def _load(target: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None when it is missing or damaged (then it is rebuilt)."""
    try:
        images = np.load(target, mmap_mode="r")
    except (OSError, ValueError, EOFError):  # missing, or cut short by a crash or full disk
        return None
    if images.shape != shape or images.dtype != np.uint8:
        return None
    return images


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"Cannot create the image cache folder {folder} ({exc.strerror}); set HPO_CACHE_DIR "
            f"to a writable folder."
        ) from exc


# --- building ----------------------------------------------------------------------------------


def _build(
    table: ImageTable, size: int, target: Path, *, n_jobs: int | None, progress: bool
) -> None:
    """Decode into a temporary file, check every image was readable, then rename into place."""
    remove_leftovers(target.parent, re.escape(target.stem) + r"\.\d+\.tmp\.npy")
    temporary = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
    try:
        _allocate(temporary, (len(table), size, size, 3))
        failures = _fill(table, size, temporary, n_jobs=n_jobs, progress=progress)
        if failures:
            raise DataError(_failure_message(table, failures))
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def remove_leftovers(folder: Path, pattern: str) -> None:
    """Remove the temporary files matching ``pattern`` (a regex of whole names) in ``folder``.

    Called under the target's lock, before building it: any temporary file of the same target
    is then a killed builder's (a crash, SIGKILL, the OOM killer), and can be as large as the
    cache itself.
    """
    name = re.compile(pattern)
    for path in folder.iterdir():
        if name.fullmatch(path.name):
            path.unlink(missing_ok=True)


def _allocate(path: Path, shape: tuple[int, ...]) -> None:
    """Create the .npy with its header and reserve its disk space."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    offset, nbytes = array.offset, array.nbytes
    del array  # flushes the header; workers reopen the file r+
    if not hasattr(os, "posix_fallocate"):
        return
    # Writing through a memmap into a sparse file on a full disk kills the process (SIGBUS);
    # reserving the space first turns that into an ordinary, explainable error.
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, offset, nbytes)
    except OSError as exc:
        raise DataError(
            f"Cannot reserve {nbytes / 1e6:.0f} MB for the image cache in {path.parent} "
            f"({exc.strerror}); free disk space or set HPO_CACHE_DIR to a larger disk."
        ) from exc
    finally:
        os.close(fd)


def _fill(
    table: ImageTable, size: int, path: Path, *, n_jobs: int | None, progress: bool
) -> list[Failure]:
    """Decode every sample into ``path`` in parallel chunks; return the unreadable ones."""
    step = min(max(math.ceil(len(table) / (cpu_count() * 8)), _CHUNK_MIN), _CHUNK_MAX)
    starts = range(0, len(table), step)
    # In-memory images are cheap to resize, and a few hundred files decode faster than worker
    # processes start: both stay in this process.
    few = table.arrays is not None or len(table) < _SMALL
    jobs = 1 if few else worker_count(n_jobs, tasks=len(starts))
    tasks = (
        delayed(_fill_chunk)(path, start, _sources(table, start, start + step), size)
        for start in starts
    )
    failures: list[Failure] = []
    with tqdm(
        total=len(table),
        desc=f"Caching {len(table)} images at {size}px",
        unit="img",
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        for done, failed in Parallel(n_jobs=jobs, return_as="generator_unordered")(tasks):
            bar.update(done)
            failures.extend(failed)
    return sorted(failures)


def _sources(table: ImageTable, start: int, stop: int) -> Sequence[Path | np.ndarray]:
    stop = min(stop, len(table))
    if table.arrays is not None:
        return list(table.arrays[start:stop])
    return [table.file(i) for i in range(start, stop)]


def _fill_chunk(
    path: Path, start: int, sources: Sequence[Path | np.ndarray], size: int
) -> tuple[int, list[Failure]]:
    """Write one chunk of decoded images into the memory-mapped cache (runs in a worker)."""
    images = np.load(path, mmap_mode="r+")
    failures = []
    for offset, source in enumerate(sources):
        try:
            images[start + offset] = _pixels(source, size)
        except DataError as exc:
            failures.append((start + offset, _why(source, exc)))
    images.flush()
    return len(sources), failures


def _pixels(source: Path | np.ndarray, size: int) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return resize_array(source, size)
    return decode_image(source, size)  # looked up at call time so tests can count decodes


def _why(source: Path | np.ndarray, exc: DataError) -> str:
    if isinstance(source, Path) and exc.__cause__ is not None:
        return unreadable_reason(source, exc.__cause__)
    return str(exc)


def _failure_message(table: ImageTable, failures: list[Failure]) -> str:
    first = ", ".join(f"{table.paths[i]} ({why})" for i, why in failures[:_FIRST_FEW])
    more = ", ..." if len(failures) > _FIRST_FEW else ""
    return (
        f"{len(failures)} of {len(table)} images in {table.source} cannot be read as images "
        f"(first: {first}{more}); remove or replace them (`hpo data {table.source}` lists "
        f"every one)."
    )


def worker_count(n_jobs: int | None, *, tasks: int) -> int:
    """Processes to use for ``tasks`` pieces of work.

    Args:
        n_jobs: joblib's convention: None or -1 means every core, -2 all but one, 3 three.
        tasks: Number of independent pieces of work; more processes than that would idle.

    Returns:
        A count from 1 to ``tasks``.
    """
    cores = cpu_count()
    wanted = cores if n_jobs is None else n_jobs
    if wanted < 0:
        wanted = cores + 1 + wanted
    return max(1, min(wanted, tasks))
