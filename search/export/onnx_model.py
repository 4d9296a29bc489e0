"""``ensemble.onnx``: the export as one ONNX file, written with PyTorch, run with onnxruntime.

The file takes uint8 RGB images ``(N, S, S, 3)`` at each member size ``S`` (one input,
``images``, when all members take one size) and returns class probabilities ``(N, C)``;
normalisation, every member with its weight, the TTA views and the vote are inside (see
`trainer.inference.onnx_graph`). Images are decoded and resized to each size outside the graph
exactly as in training, so each member sees the pixels it was trained on. Its
``metadata_props`` hold the class names (JSON), ``image_sizes`` (JSON), ``image_size`` (the
largest), ``tta``, the study and its metric.

Running it (`OnnxEnsemble`) needs numpy, Pillow and onnxruntime, not PyTorch: this module
imports torch only inside `write_onnx`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.errors import DataError, ExportError
from trainer.images import decode_image, resize_array, unreadable_reason

if TYPE_CHECKING:
    from trainer.inference.ensemble import Ensemble

ONNX_FILE = "ensemble.onnx"
_CHECK_IMAGES = 8
_REAL_IMAGES = 64  # a few seconds even for 224 px members


class OnnxExportError(ExportError):
    """An ``ensemble.onnx`` that is missing or cannot be run."""


@dataclass(frozen=True)
class OnnxCheck:
    """How closely the written file agrees with the PyTorch ensemble on the same pixels.

    Attributes:
        images: Images compared.
        largest_difference: The largest difference of a probability.
        kind: ``holdout`` (the study's holdout images) or ``random``.
    """

    images: int
    largest_difference: float
    kind: str = "random"

    def sentence(self) -> str:
        """For report.md."""
        return (
            f"onnxruntime checked against the PyTorch ensemble on {self.images} {self.kind} "
            "images at each member size (files are decoded to each size outside the graph, as "
            f"for PyTorch): largest difference of a probability {self.largest_difference:.1e}."
        )


def write_onnx(
    folder: Path,
    ensemble: Ensemble,
    *,
    metadata: Mapping[str, Any],
    seed: int = 0,
    images: Mapping[int, np.ndarray] | None = None,
) -> OnnxCheck:
    """Write ``folder/ensemble.onnx`` from ``ensemble`` (on the CPU) and check it.

    Args:
        folder: The export folder being written.
        ensemble: The export's ensemble, loaded on the CPU.
        metadata: Extra ``metadata_props`` (study, metric).
        seed: Seed of the random check images.
        images: Real images to check on, ``{size: (N, size, size, 3)}`` at every member size
            (the study's holdout, as training decoded it; the first 64 are run); None checks
            on random images.
    """
    from trainer.inference.onnx_graph import export_onnx

    path = export_onnx(ensemble, Path(folder) / ONNX_FILE, metadata=metadata)
    model = OnnxEnsemble.load(path)
    kind = "holdout"
    if images is None or not len(images[model.image_sizes[0]]):
        images, kind = _random_images(model.image_sizes, seed), "random"
    batch = {size: images[size][:_REAL_IMAGES] for size in model.image_sizes}
    difference = np.abs(model.predict(batch) - ensemble.predict(batch)).max()
    return OnnxCheck(len(batch[model.image_sizes[0]]), float(difference), kind)


def _random_images(sizes: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, 256, (_CHECK_IMAGES, s, s, 3), dtype=np.uint8) for s in sizes}


class OnnxEnsemble:
    """An ``ensemble.onnx`` in an onnxruntime session, with its classes and input size.

    Args:
        session: The onnxruntime ``InferenceSession``.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        meta = session.get_modelmeta().custom_metadata_map
        self.classes = tuple(json.loads(meta["classes"]))
        self.image_size = int(meta["image_size"])
        # Files written before per-size inputs had one input at image_size.
        self.image_sizes = tuple(json.loads(meta.get("image_sizes", f"[{self.image_size}]")))
        self.tta = meta.get("tta", "none")
        self.metric = meta.get("metric")
        self.input_names = [i.name for i in session.get_inputs()]  # ascending sizes

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> OnnxEnsemble:
        """Open ``path``: an ``.onnx`` file, or an export folder holding ``ensemble.onnx``.

        Args:
            path: The file or the export folder.
            device: ``cuda`` to run on onnxruntime's CUDA provider when it has one; else CPU.

        Raises:
            OnnxExportError: No such file, or onnxruntime cannot load it.
        """
        import onnxruntime as ort

        file = Path(path) / ONNX_FILE if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise OnnxExportError(
                f"{file} does not exist; export the study again with `hpo export STUDY` "
                "(every export writes it), or predict without --onnx."
            )
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(str(file), providers=providers)
            return cls(session)
        except (ort.capi.onnxruntime_pybind11_state.Fail, KeyError, ValueError) as err:
            raise OnnxExportError(
                f"{file} cannot be run ({type(err).__name__}: {err}); export the study again "
                "with `hpo export STUDY`."
            ) from None

    def predict(
        self, images: np.ndarray | Mapping[int, np.ndarray], *, batch_size: int = 64
    ) -> np.ndarray:
        """Class probabilities ``(N, C)``.

        Args:
            images: uint8 images ``(N, H, W, 3)`` (resized to each member size as arrays are
                in `trainer.images`), or ``{size: (N, size, size, 3)}`` at every member size.
            batch_size: Images per run of the graph.
        """
        by_size = images if isinstance(images, Mapping) else self._at_sizes(images)
        count = len(by_size[self.image_sizes[0]])
        out = [np.empty((0, len(self.classes)), np.float32)]
        for start in range(0, count, batch_size):
            feed = {
                name: np.ascontiguousarray(by_size[size][start : start + batch_size], np.uint8)
                for name, size in zip(self.input_names, self.image_sizes, strict=True)
            }
            out.append(self.session.run(None, feed)[0])
        return np.concatenate(out)

    def _at_sizes(self, images: np.ndarray) -> dict[int, np.ndarray]:
        result = {}
        for size in self.image_sizes:
            if images.shape[1:3] == (size, size):
                result[size] = images
            else:
                resized = [resize_array(image, size) for image in images]
                result[size] = np.stack(resized) if resized else np.empty((0, size, size, 3))
        return result

    def predict_files(
        self, paths: Sequence[Path], *, batch_size: int = 64, progress: bool = False
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Probabilities of image files, decoded as in training (rows of NaN when unreadable).

        Returns:
            ``(probs, unreadable)`` with ``{row: reason}`` for the files that cannot be read.
        """
        from tqdm.auto import tqdm

        probs = np.full((len(paths), len(self.classes)), np.nan, dtype=np.float32)
        unreadable: dict[int, str] = {}
        bar = tqdm(total=len(paths), unit="img", desc="Predicting", disable=not progress)
        with bar, ThreadPoolExecutor(max_workers=4) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = list(paths[start : start + batch_size])
                decoded = list(pool.map(self._decode, chunk))
                failed = {start + i: d for i, d in enumerate(decoded) if isinstance(d, str)}
                good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
                if good:
                    batch = {
                        size: np.stack([decoded[i][k] for i in good])
                        for k, size in enumerate(self.image_sizes)
                    }
                    probs[[start + i for i in good]] = self.predict(batch, batch_size=batch_size)
                unreadable.update(failed)
                bar.update(len(chunk))
        return probs, unreadable

    def _decode(self, path: Path) -> list[np.ndarray] | str:
        """The file at every member size (each decoded from the file, as in training)."""
        try:
            return [decode_image(Path(path), size) for size in self.image_sizes]
        except DataError as err:
            cause = err.__cause__
            return unreadable_reason(Path(path), cause) if cause is not None else str(err)
