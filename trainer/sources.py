"""Where labelled images come from: a folder of class subfolders, a CSV, or a built-in dataset.

`load_table` turns what the user typed into an `ImageTable`: relative paths, integer labels, class
names in a stable order, optional groups, and a `content_id` that is the same on every machine
holding the same files. Nothing here decodes pixels; see `trainer.images` and `trainer.cache`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainer.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
BUILTINS = ("digits",)
_BUILTIN_PREFIX = "builtin:"
_FIRST_FEW = 3


@dataclass(frozen=True, eq=False)
class ImageTable:
    """The samples of one dataset, without pixels (except for built-in datasets).

    Attributes:
        source: What the user gave: ``"builtin:digits"``, a folder, or a CSV path.
        root: Absolute folder that ``paths`` are relative to; None for built-in datasets.
        paths: Relative POSIX paths (absolute only for CSV rows outside the CSV's folder);
            pseudo keys such as ``"digits/00017"`` for built-in datasets.
        labels: int64 index into ``classes`` per sample, shape (N,).
        classes: Class names; the index is the label id.
        groups: Group id per sample as a str array, or None.
        content_id: Short hex hash of paths, labels, groups and file sizes (not mtimes).
        arrays: In-memory uint8 (N, H, W, 3) pixels for built-in datasets, else None.
    """

    source: str
    root: Path | None
    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    groups: np.ndarray | None
    content_id: str
    arrays: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, i: int) -> Path:
        """Return the absolute path of sample ``i``.

        Raises:
            ValueError: For built-in datasets, which have no files.
        """
        if self.root is None:
            raise ValueError(f"{self.source} is held in memory and has no files; use .arrays.")
        return self.root / self.paths[i]


def load_table(source: str | Path) -> ImageTable:
    """Read a dataset's listing: which images exist, their labels, classes and groups.

    Args:
        source: ``"builtin:digits"``, a folder with one subfolder per class, or a CSV with
            columns ``path,label`` and optionally ``group``.

    Returns:
        The dataset's `ImageTable`.

    Raises:
        DataError: The source is missing, empty, has a single class, or is malformed.
    """
    text = str(source)
    if text.startswith(_BUILTIN_PREFIX):
        return _load_builtin(text[len(_BUILTIN_PREFIX) :])
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"Data path {text} does not exist; give a folder of class subfolders, a CSV file "
            f"or builtin:digits."
        )
    try:
        if path.is_dir():
            return _load_folder(path.resolve(), text)
        if path.suffix.lower() == ".csv":
            return _load_csv(path.resolve(), text)
    except PermissionError as exc:
        raise DataError(
            f"Data path {text} cannot be read ({exc.strerror}: {exc.filename}); give your user "
            f"read access to it."
        ) from exc
    raise DataError(
        f"Data path {text} is a file but not a .csv; give a CSV with columns path,label[,group] "
        f"or a folder of class subfolders."
    )


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (case-insensitive) and is not hidden."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def class_order(names: set[str] | list[str]) -> tuple[str, ...]:
    """Sort class names numerically when every name is an integer, else as strings."""
    unique = set(names)
    try:
        return tuple(sorted(unique, key=lambda n: (int(n), n)))
    except ValueError:
        return tuple(sorted(unique))


# --- folders -----------------------------------------------------------------------------------


def _load_folder(root: Path, text: str) -> ImageTable:
    """One subfolder per class; images found at any depth inside it."""
    class_dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    found = {d.name: _images_under(d, root) for d in class_dirs}
    found = {name: paths for name, paths in found.items() if paths}
    if not found:
        raise DataError(_no_images_message(root, text))
    classes = class_order(list(found))
    pairs = sorted((p, label) for label, name in enumerate(classes) for p in found[name])
    paths = tuple(p for p, _ in pairs)
    labels = np.array([label for _, label in pairs], dtype=np.int64)
    return _finish(text, root, paths, labels, classes, None)


def _images_under(folder: Path, root: Path) -> list[str]:
    """Relative POSIX paths of the non-hidden images below ``folder``."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if not hidden and is_image_name(path.name) and path.is_file():
            found.append(rel.as_posix())
    return found


def _no_images_message(root: Path, text: str) -> str:
    loose = [p for p in root.iterdir() if p.is_file() and is_image_name(p.name)]
    if loose:
        return (
            f"Data folder {text} has {len(loose)} images but no class subfolders; move each "
            f"class's images into a subfolder named after the class."
        )
    return (
        f"Data folder {text} has no images in class subfolders; put each class's images "
        f"({', '.join(sorted(IMAGE_EXTENSIONS))}) into a subfolder named after the class."
    )


# --- CSV ---------------------------------------------------------------------------------------


def _load_csv(csv: Path, text: str) -> ImageTable:
    """Columns ``path,label[,group]``; paths relative to the CSV's folder or absolute."""
    frame = _read_csv(csv, text)
    root = csv.parent
    paths = tuple(_relative(root, p) for p in frame["path"])
    _check_rows(frame, paths, root, text)
    classes = class_order(list(frame["label"]))
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[v] for v in frame["label"]], dtype=np.int64)
    groups = frame["group"].to_numpy(dtype=str) if "group" in frame else None
    return _finish(text, root, paths, labels, classes, groups)


def _read_csv(csv: Path, text: str) -> pd.DataFrame:
    """Read every cell as a stripped string and check the needed columns exist."""
    import pandas as pd  # lazily: cache workers import this module and never read CSVs

    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"CSV {text} cannot be parsed ({reason}); save it as comma-separated text with a "
            f"header row path,label[,group]."
        ) from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        found = ", ".join(frame.columns) or "none"
        raise DataError(
            f"CSV {text} lacks column(s) {', '.join(missing)} (found: {found}); add a header "
            f"row with path,label and optionally group."
        )
    columns = [c for c in ("path", "label", "group") if c in frame.columns]
    return frame[columns].apply(lambda col: col.str.strip())


def _relative(root: Path, value: str) -> str:
    """A POSIX path relative to ``root`` when possible, else absolute."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        return Path(value).as_posix()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _check_rows(frame: pd.DataFrame, paths: tuple[str, ...], root: Path, text: str) -> None:
    """Every row names a distinct existing file, a label, and (if used) a group."""
    if not len(frame):
        raise DataError(f"CSV {text} has a header but no rows; add one row per image.")
    for column in [c for c in ("path", "label", "group") if c in frame]:
        empty = [i + 2 for i, v in enumerate(frame[column]) if not v]  # +2: header, 1-based
        if empty:
            raise DataError(
                f"CSV {text} has {len(empty)} row(s) with an empty {column} (first at line "
                f"{_few(empty)}); fill them in or delete those rows."
            )
    _check_unique(paths, text)
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise DataError(
            f"CSV {text} lists {len(missing)} file(s) that do not exist (first: {_few(missing)}; "
            f"relative paths are read from {root}); fix the paths or delete those rows."
        )


def _check_unique(paths: tuple[str, ...], text: str) -> None:
    # A repeated image could land in both the train and validation side of a fold.
    repeated = [p for p, n in Counter(paths).items() if n > 1]
    if repeated:
        raise DataError(
            f"CSV {text} lists {len(repeated)} path(s) more than once (first: "
            f"{_few(repeated)}); keep one row per image."
        )


def _few(items: list) -> str:
    more = ", ..." if len(items) > _FIRST_FEW else ""
    return ", ".join(str(x) for x in items[:_FIRST_FEW]) + more


# --- built-in ----------------------------------------------------------------------------------


def _load_builtin(name: str) -> ImageTable:
    """scikit-learn's 8x8 digits (values 0..16) as RGB uint8 (0..255)."""
    if name not in BUILTINS:
        known = ", ".join(_BUILTIN_PREFIX + b for b in BUILTINS)
        raise DataError(f"Unknown built-in dataset {_BUILTIN_PREFIX}{name}; use one of {known}.")
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    arrays = np.repeat(grey[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    paths = tuple(f"{name}/{i:05d}" for i in range(len(labels)))
    digest = hashlib.sha256(arrays.tobytes() + labels.tobytes()).hexdigest()[:16]
    arrays.setflags(write=False)
    labels.setflags(write=False)
    classes = tuple(str(c) for c in range(10))
    return ImageTable(_BUILTIN_PREFIX + name, None, paths, labels, classes, None, digest, arrays)


# --- shared ------------------------------------------------------------------------------------


def _finish(
    text: str,
    root: Path,
    paths: tuple[str, ...],
    labels: np.ndarray,
    classes: tuple[str, ...],
    groups: np.ndarray | None,
) -> ImageTable:
    """Check there is something to learn, hash the contents and freeze the arrays."""
    if len(classes) < 2:
        raise DataError(
            f"Data {text} has only one class ({classes[0]!r}, {len(paths)} images); a "
            f"classifier needs at least two, so add images of another class."
        )
    sizes = [(root / p).stat().st_size for p in paths]
    content_id = _content_id(paths, [classes[i] for i in labels], groups, sizes)
    labels.setflags(write=False)
    if groups is not None:
        groups.setflags(write=False)
    return ImageTable(text, root, paths, labels, classes, groups, content_id)


def _content_id(
    paths: tuple[str, ...], names: list[str], groups: np.ndarray | None, sizes: list[int]
) -> str:
    # Sizes, not mtimes: a copy or checkout of the same files must give the same id.
    digest = hashlib.sha256()
    group_values = groups if groups is not None else [""] * len(paths)
    for row in zip(paths, names, group_values, sizes, strict=True):
        digest.update("\x1f".join(str(v) for v in row).encode() + b"\x1e")
    return digest.hexdigest()[:16]
