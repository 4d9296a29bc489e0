"""What ``hpo data PATH`` reports: classes, counts, sizes, modes, groups and unreadable files.

Only image headers are read (Pillow's ``open`` + ``verify``), in parallel, so a large dataset is
summarised in seconds. A file that cannot be read is listed, never raised: the point of the
report is to show every problem at once. Damage deep inside pixel data (a truncated JPEG, say)
can pass a header check; the cache build decodes every image and reports those.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from PIL import Image

from trainer.cache import worker_count
from trainer.images import DECODE_ERRORS, unreadable_reason
from trainer.sources import ImageTable

TINY_CLASS = 5  # fewer images than the default number of folds
IMBALANCE_RATIO = 10.0
_SHOWN_UNREADABLE = 20
_BAR_WIDTH = 30
_CHUNK = 256
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})

Header = tuple[int, int, str]  # width, height, mode
Checked = tuple[int, Header | str]  # sample index, header or the reason it is unreadable


@dataclass(frozen=True)
class DataSummary:
    """The facts about a dataset a user checks before searching on it.

    Attributes:
        source: What the user gave (folder, CSV or ``builtin:NAME``).
        n_images: Samples listed, readable or not.
        classes: Class names in label order.
        class_counts: Samples per class, in label order.
        n_groups: Distinct groups, or None without a group column.
        widths: Min, median and max width in pixels as displayed (EXIF applied); None for
            built-in datasets.
        heights: Min, median and max height, like ``widths``.
        modes: Readable images per Pillow mode (``RGB``, ``L``, ``P`` ...).
        unreadable: (relative path, reason) for every file whose header cannot be read.
    """

    source: str
    n_images: int
    classes: tuple[str, ...]
    class_counts: dict[str, int]
    n_groups: int | None
    widths: tuple[int, int, int] | None
    heights: tuple[int, int, int] | None
    modes: dict[str, int]
    unreadable: tuple[tuple[str, str], ...] = field(default=())

    def warnings(self) -> list[str]:
        """Sentences about problems that will hurt training: tiny or very imbalanced classes."""
        found = []
        tiny = [f"{name!r} ({n})" for name, n in self.class_counts.items() if n < TINY_CLASS]
        if tiny:
            which = f"class {tiny[0]} has" if len(tiny) == 1 else f"classes {', '.join(tiny)} have"
            found.append(
                f"{which} fewer than {TINY_CLASS} images; stratified "
                f"{TINY_CLASS}-fold cross-validation needs at least one per fold, so add images, "
                f"merge classes or use fewer folds."
            )
        largest, smallest = _extremes(self.class_counts)
        if smallest and largest[1] / smallest[1] >= IMBALANCE_RATIO:
            found.append(
                f"classes are imbalanced ({largest[0]!r} has {largest[1]} images, {smallest[0]!r} "
                f"{smallest[1]}); consider class_weights='balanced' and metric='f1_macro'."
            )
        return found

    def to_text(self) -> str:
        """A readable multi-line report."""
        lines = [f"Data: {self.source}", self._headline(), *self._class_lines()]
        lines += self._image_lines()
        lines += self._unreadable_lines()
        lines += [f"Warning: {warning}" for warning in self.warnings()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-serialisable types (lists, dicts, str, int, None)."""
        return {
            "source": self.source,
            "n_images": self.n_images,
            "classes": list(self.classes),
            "class_counts": dict(self.class_counts),
            "n_groups": self.n_groups,
            "widths": None if self.widths is None else list(self.widths),
            "heights": None if self.heights is None else list(self.heights),
            "modes": dict(self.modes),
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "warnings": self.warnings(),
        }

    def _headline(self) -> str:
        groups = "" if self.n_groups is None else f", {self.n_groups} groups"
        return f"{self.n_images} images in {len(self.classes)} classes{groups}"

    def _class_lines(self) -> list[str]:
        width = min(max(len(name) for name in self.classes), 30)
        most = max(self.class_counts.values())
        lines = []
        for name, count in self.class_counts.items():
            share = 100.0 * count / max(self.n_images, 1)
            bar = "#" * max(round(_BAR_WIDTH * count / most), 1 if count else 0)
            lines.append(f"  {name:<{width}}  {count:>7}  {share:5.1f}%  {bar}")
        return lines

    def _image_lines(self) -> list[str]:
        lines = []
        if self.widths is not None and self.heights is not None:
            lines.append(f"Width:  {_spread(self.widths)} px (min / median / max)")
            lines.append(f"Height: {_spread(self.heights)} px (min / median / max)")
        if self.modes:
            ordered = sorted(self.modes.items(), key=lambda kv: (-kv[1], kv[0]))
            lines.append("Modes:  " + ", ".join(f"{mode} {n}" for mode, n in ordered))
        return lines

    def _unreadable_lines(self) -> list[str]:
        if not self.unreadable:
            return ["Unreadable: none"]
        lines = [f"Unreadable: {len(self.unreadable)} files (remove or replace them):"]
        lines += [f"  {path}: {reason}" for path, reason in self.unreadable[:_SHOWN_UNREADABLE]]
        hidden = len(self.unreadable) - _SHOWN_UNREADABLE
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        return lines


def summarize(table: ImageTable, *, n_jobs: int | None = None) -> DataSummary:
    """Count classes and read every image header, listing (not raising on) unreadable files.

    Args:
        table: The dataset, from `trainer.sources.load_table`.
        n_jobs: Processes reading headers; None uses every core.

    Returns:
        The dataset's `DataSummary`.
    """
    counts = np.bincount(table.labels, minlength=len(table.classes))
    class_counts = {name: int(n) for name, n in zip(table.classes, counts, strict=True)}
    n_groups = None if table.groups is None else len(set(table.groups.tolist()))
    base = dict(
        source=table.source,
        n_images=len(table),
        classes=table.classes,
        class_counts=class_counts,
        n_groups=n_groups,
    )
    if table.arrays is not None:
        return DataSummary(**base, widths=None, heights=None, modes={"RGB": len(table)})
    checked = _check_all(table, n_jobs=n_jobs)
    headers = [h for _, h in checked if not isinstance(h, str)]
    unreadable = tuple((table.paths[i], h) for i, h in checked if isinstance(h, str))
    return DataSummary(
        **base,
        widths=_min_median_max([h[0] for h in headers]),
        heights=_min_median_max([h[1] for h in headers]),
        modes=dict(Counter(h[2] for h in headers)),
        unreadable=unreadable,
    )


def read_header(path: Path) -> Header:
    """Width and height as displayed (EXIF orientation applied) and mode, from the header.

    Raises:
        OSError, ValueError and the other `trainer.images.DECODE_ERRORS`: Not a valid image.
    """
    with Image.open(path) as img:
        width, height = img.size
        mode = img.mode
        if _orientation(img) in _SWAPS_AXES:
            width, height = height, width
        img.verify()
    return width, height, mode


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation found while parsing the header (``getexif`` could load pixels).

    TIFF has no such block here: Pillow already reports a TIFF's size as displayed.
    """
    raw = img.info.get("exif")
    if not isinstance(raw, bytes):
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_ORIENTATION_TAG, 1))
    except DECODE_ERRORS:
        return 1  # a bad EXIF block only costs the size report its rotation


def _check_all(table: ImageTable, *, n_jobs: int | None) -> list[Checked]:
    files = [table.file(i) for i in range(len(table))]
    starts = range(0, len(files), _CHUNK)
    jobs = worker_count(n_jobs, tasks=len(starts))
    parts = Parallel(n_jobs=jobs)(
        delayed(_check_chunk)(start, files[start : start + _CHUNK]) for start in starts
    )
    return [item for part in parts for item in part]


def _check_chunk(start: int, files: list[Path]) -> list[Checked]:
    checked: list[Checked] = []
    for offset, path in enumerate(files):
        try:
            checked.append((start + offset, read_header(path)))
        except DECODE_ERRORS as exc:
            checked.append((start + offset, unreadable_reason(path, exc)))
    return checked


def _min_median_max(values: list[int]) -> tuple[int, int, int] | None:
    if not values:
        return None
    return min(values), math.floor(float(np.median(values)) + 0.5), max(values)


def _spread(values: tuple[int, int, int]) -> str:
    return " / ".join(str(v) for v in values)


def _extremes(counts: dict[str, int]) -> tuple[tuple[str, int], tuple[str, int] | None]:
    """(name, count) of the largest and the smallest non-empty class."""
    ranked = sorted(counts.items(), key=lambda kv: kv[1])
    non_empty = [kv for kv in ranked if kv[1] > 0]
    return ranked[-1], (non_empty[0] if non_empty else None)
