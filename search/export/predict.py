"""`hpo predict EXPORT INPUT`: label new images with an exported ensemble.

INPUT is a folder (images found at any depth) or a CSV with a ``path`` column (relative paths
are read from the CSV's folder). The output CSV has the path, the predicted label and one
``prob_<class>`` column per class; a file that cannot be read gets an empty label and empty
probabilities, and is named on stderr. With ``--onnx`` the export's ``ensemble.onnx`` runs in
onnxruntime and PyTorch is never imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.errors import DataError, UserError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# `--tta` without a mode: the export's own mode, or hflip when the export has none and its
# models were trained with flips (every TTA mode mirrors images; hflip=False rules them out).
EXPORT_TTA = "export"


class PredictInputError(UserError):
    """An INPUT that `hpo predict` cannot read images from."""


@dataclass(frozen=True)
class Inputs:
    """The images to label: what to write in the ``path`` column, and the files."""

    shown: list[str]
    files: list[Path]


def find_inputs(source: str | Path) -> Inputs:
    """The images of a folder (recursively, hidden files skipped) or of a CSV's path column.

    Raises:
        PredictInputError: The input does not exist, holds no images, or the CSV has no path
            column.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_inputs(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _csv_inputs(path)
    if path.exists():
        raise PredictInputError(
            f"Input {source} is neither a folder nor a .csv; give a folder of images or a CSV "
            "with a path column."
        )
    raise PredictInputError(
        f"Input {source} does not exist; give a folder of images or a CSV with a path column."
    )


def _folder_inputs(folder: Path) -> Inputs:
    from trainer.sources import is_image_name

    found = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()
        and is_image_name(p.name)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not found:
        from trainer.sources import IMAGE_EXTENSIONS

        raise PredictInputError(
            f"Input folder {folder} holds no images; point at a folder with image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}), in subfolders or not."
        )
    return Inputs(found, [folder / name for name in found])


def _csv_inputs(csv: Path) -> Inputs:
    import pandas as pd

    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PredictInputError(
            f"CSV {csv} cannot be parsed ({type(err).__name__}); save it as comma-separated "
            "text with a header row that has a path column."
        ) from None
    columns = {str(c).strip().lower(): c for c in frame.columns}
    if "path" not in columns:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise PredictInputError(
            f"CSV {csv} has no path column (found: {found}); add a header row with a column "
            "named path listing the image files."
        )
    shown = [p.strip() for p in frame[columns["path"]] if p.strip()]
    if not shown:
        raise PredictInputError(f"CSV {csv} lists no paths; add one row per image file.")
    return Inputs(shown, [_resolve(csv.parent, p) for p in shown])


def _resolve(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def predict_to_csv(
    export: str | Path,
    source: str | Path,
    *,
    out: str | Path = "predictions.csv",
    tta: str | None = None,
    device: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    onnx: bool = False,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Label every image of ``source`` with the export and write ``out``.

    Args:
        export: The export folder.
        source: A folder of images or a CSV with a path column.
        out: The CSV to write.
        tta: A TTA mode, ``"export"`` for the export's own (hflip if it has none and its
            models may flip), or None for the export's default.
        device: ``cuda``, ``mps`` or ``cpu``; None picks the best available.
        batch_size: Images decoded and predicted at a time.
        progress: Show a progress bar on stderr.
        onnx: Predict with the export's ``ensemble.onnx`` in onnxruntime (its TTA is fixed).

    Returns:
        The written table, and ``{path: reason}`` for files that could not be read.

    Raises:
        UserError: For a missing or unusable export, or an unusable input.
    """
    import pandas as pd

    from trainer.inference.predictions import probability_frame

    inputs = find_inputs(source)
    if onnx:
        probs, failed, classes = _onnx_probs(export, inputs, tta, device, batch_size, progress)
    else:
        probs, failed, classes = _torch_probs(export, inputs, tta, device, batch_size, progress)
    table = pd.concat(
        [pd.DataFrame({"path": inputs.shown}), probability_frame(probs, classes)], axis=1
    )
    _write(table, Path(out))
    return table, {inputs.shown[row]: why for row, why in failed.items()}


def _torch_probs(
    export: str | Path,
    inputs: Inputs,
    tta: str | None,
    device: str | None,
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, dict[int, str], tuple[str, ...]]:
    from trainer.augment import tta_views
    from trainer.inference.ensemble import Ensemble

    ensemble = Ensemble.load(export, device=device)
    mode = _tta_mode(tta, ensemble.tta, flips=_may_flip(export))
    tta_views(mode)  # a wrong mode fails before any image is decoded
    probs, failed = ensemble.predict_files(
        inputs.files, tta=mode, batch_size=batch_size, progress=progress
    )
    return probs, failed, ensemble.classes


def _onnx_probs(
    export: str | Path,
    inputs: Inputs,
    tta: str | None,
    device: str | None,
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, dict[int, str], tuple[str, ...]]:
    from search.export.onnx_model import OnnxEnsemble

    model = OnnxEnsemble.load(export, device=device)
    if tta is not None:
        raise PredictInputError(
            f"--tta cannot change ensemble.onnx, whose test-time augmentation ({model.tta}) is "
            "part of the graph; drop --tta, or predict without --onnx."
        )
    probs, failed = model.predict_files(inputs.files, batch_size=batch_size, progress=progress)
    return probs, failed, model.classes


def _tta_mode(requested: str | None, exported: str, *, flips: bool) -> str:
    if requested is None:
        return exported
    if requested == EXPORT_TTA:
        return exported if exported != "none" or not flips else "hflip"
    return requested


def _may_flip(export: str | Path) -> bool:
    """Whether every member was trained with horizontal flips (``hflip``, on by default)."""
    from trainer.inference.manifest import Manifest

    return all(m.config.get("hflip", True) for m in Manifest.read(Path(export)).members)


def _write(table: pd.DataFrame, out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    except OSError as err:
        raise DataError(
            f"Cannot write {out} ({err.strerror or err}); pass a writable file with --out."
        ) from None
