"""A soft-voting ensemble of trained fold models, loaded from an export folder.

An export folder holds ``manifest.json`` (classes, TTA, and per member: weights file, resolved
`TrainConfig`, normalisation, voting weight; see `trainer.inference.manifest`) and one
safetensors file per member. Loading it needs only this package: no study storage, no MLflow,
and no pickled code (weights are read with safetensors).

Images are preprocessed exactly as in training: squashed to the member's ``image_size`` with
`trainer.images` (files) or `resize_array` (arrays), then normalised on the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from trainer.augment import View, tta_views
from trainer.config import TrainConfig
from trainer.cpus import cpu_count
from trainer.device import eval_batch_size, pick_device
from trainer.errors import DataError, UserError
from trainer.images import decode_image, resize_array, unreadable_reason
from trainer.inference.manifest import (
    EXPORT_AGAIN,
    MANIFEST,
    ExportError,
    Manifest,
    MemberSpec,
    file_sha256,
)
from trainer.loader import stats_tensors, to_model_input
from trainer.models import build_model

# --- loading members ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Member:
    """A loaded member: its model in eval mode on the ensemble's device and its preprocessing."""

    name: str
    model: torch.nn.Module
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor
    weight: float = 1.0


def load_member(folder: Path, spec: MemberSpec, classes: int, device: torch.device) -> Member:
    """Build the member's backbone from its config and load its weights strictly.

    Raises:
        ExportError: The weights file is missing, damaged, or does not fit the backbone or the
            number of classes.
    """
    path = Path(folder) / spec.weights
    state = _read_weights(path, spec)
    try:
        # Weights come from the file, so nothing is downloaded; finetune="head" rebuilds the
        # FrozenBatchNorm layers the weights were saved from.
        config = TrainConfig(**{**spec.config, "pretrained": False})
    except (TypeError, UserError) as err:
        raise ExportError(
            f"Member {spec.name} in {folder / MANIFEST} has a bad config ({err}); {EXPORT_AGAIN}."
        ) from None
    model = build_model(config, classes, architecture=spec.architecture)
    _check_fits(model, state, path, classes)
    model.load_state_dict(state, strict=True)
    model = model.to(device).eval()
    mean, std = stats_tensors(spec.mean, spec.std, device)
    return Member(spec.name, model, config.image_size, mean, std, spec.weight)


def _read_weights(path: Path, spec: MemberSpec) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ExportError(f"Weights file {path} of member {spec.name} is missing; {EXPORT_AGAIN}.")
    if spec.sha256 and file_sha256(path) != spec.sha256:
        raise ExportError(
            f"Weights file {path} does not match the checksum in {MANIFEST} (changed or "
            f"damaged); {EXPORT_AGAIN}."
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ExportError(f"Weights file {path} cannot be read ({err}); {EXPORT_AGAIN}.") from None


def _check_fits(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, classes: int
) -> None:
    expected = model.state_dict()
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    head = _head_classes(model, state)
    if head is not None and head != classes:
        raise ExportError(
            f"Weights file {path} has a classifier for {head} classes but {MANIFEST} lists "
            f"{classes}; use the weights and manifest of the same export, or {EXPORT_AGAIN}."
        )
    if wrong or missing or extra:
        first = (wrong or missing or extra)[0]
        raise ExportError(
            f"Weights file {path} does not fit its backbone ({len(wrong)} tensors of another "
            f"shape, {len(missing)} missing, {len(extra)} unexpected, e.g. {first}); "
            f"{EXPORT_AGAIN}."
        )


def _head_classes(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """Outputs of the classifier stored in ``state`` (None when it cannot be told)."""
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        weight = f"{name}.weight"
        if module is classifier and name and weight in state:
            return int(state[weight].shape[0])
    return None


# --- the ensemble ------------------------------------------------------------------------------


class Ensemble:
    """Averages the class probabilities of its members (soft voting), optionally over TTA views.

    The vote is weighted by the members' ``weight`` (normalised to sum 1): an export built by
    ensemble selection gives each trial's fold models the share the selection chose.

    Args:
        members: The loaded members.
        classes: Class names; column ``i`` of every probability matrix is ``classes[i]``.
        tta: Default test-time augmentation mode (see `trainer.augment.TTA_MODES`).
        device: Where the members run.
    """

    def __init__(
        self,
        members: Sequence[Member],
        *,
        classes: Sequence[str],
        tta: str = "none",
        device: torch.device | None = None,
    ) -> None:
        tta_views(tta)
        self.members, self.classes, self.tta = list(members), tuple(classes), tta
        self.device = device or torch.device("cpu")
        shares = np.array([m.weight for m in self.members], dtype=np.float64)
        self.weights = (shares / shares.sum()).astype(np.float32)

    @classmethod
    def load(
        cls, folder: str | Path, *, tta: str | None = None, device: str | None = None
    ) -> Ensemble:
        """Load an export folder (`Manifest` plus safetensors weights).

        Args:
            folder: The export folder.
            tta: Overrides the manifest's TTA mode.
            device: ``cuda``, ``mps`` or ``cpu``; None picks the best available.

        Raises:
            ExportError: The folder, manifest or a weights file is missing or unusable.
        """
        folder = Path(folder)
        manifest = Manifest.read(folder)
        where = pick_device(device)
        members = [load_member(folder, m, len(manifest.classes), where) for m in manifest.members]
        mode = manifest.tta if tta is None else tta
        return cls(members, classes=manifest.classes, tta=mode, device=where)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The distinct input sizes of the members."""
        return tuple(sorted({m.image_size for m in self.members}))

    def member_probs(
        self,
        images: np.ndarray | Sequence[np.ndarray] | Mapping[int, np.ndarray],
        *,
        tta: str | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Every member's probabilities, shape ``(members, N, classes)``, float32.

        Args:
            images: A uint8 ``(N, H, W, 3)`` batch, a sequence of images of any size and mode,
                or ``{image_size: batch}`` already at every member's size.
            tta: Overrides the ensemble's TTA mode (``none`` for plain predictions).
            batch_size: Images per forward pass; by default each member's
                `trainer.device.eval_batch_size`.
        """
        by_size = images if isinstance(images, Mapping) else prepare(images, self.sizes)
        views = tta_views(self.tta if tta is None else tta)
        return np.stack(
            [
                _probs(m, by_size[m.image_size], views, len(self.classes), batch_size)
                for m in self.members
            ]
        )

    def predict(
        self,
        images: np.ndarray | Sequence[np.ndarray] | Mapping[int, np.ndarray],
        *,
        tta: str | None = None,
    ) -> np.ndarray:
        """Class probabilities ``(N, classes)``: the weighted mean over members (soft voting)."""
        return np.tensordot(self.weights, self.member_probs(images, tta=tta), axes=1)

    def predict_files(
        self,
        paths: Sequence[Path],
        *,
        tta: str | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Probabilities of image files, decoded as in training.

        Returns:
            ``(probs, unreadable)``: probabilities ``(N, classes)`` (rows of NaN for files that
            cannot be read) and ``{row: reason}`` for those files.
        """
        probs = np.full((len(paths), len(self.classes)), np.nan, dtype=np.float32)
        unreadable: dict[int, str] = {}
        bar = tqdm(total=len(paths), unit="img", desc="Predicting", disable=not progress)
        with bar, ThreadPoolExecutor(max_workers=_decode_threads()) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                images, failed = read_images(chunk, self.sizes, pool=pool)
                probs[start : start + len(chunk)] = self.predict(images, tta=tta)
                unreadable.update({start + row: why for row, why in failed.items()})
                bar.update(len(chunk))
        for row in unreadable:
            probs[row] = np.nan
        return probs, unreadable


def vote_shares(member_probs: np.ndarray) -> np.ndarray:
    """The share of members whose top class is each class, ``(N, C)``."""
    members, _, classes = member_probs.shape
    votes = np.eye(classes, dtype=np.float32)[member_probs.argmax(axis=2)]
    return votes.sum(axis=0) / members


def hard_labels(member_probs: np.ndarray) -> np.ndarray:
    """Majority-vote labels; a tie goes to the class with the larger mean probability."""
    soft = member_probs.mean(axis=0)
    # Shares differ by at least 1/members, so the tiny soft term only breaks ties.
    return np.argmax(vote_shares(member_probs) + 1e-6 * soft, axis=1)


@torch.inference_mode()
def _probs(
    member: Member,
    images: np.ndarray,
    views: Sequence[View],
    classes: int,
    batch_size: int | None,
) -> np.ndarray:
    outputs = [torch.empty((0, classes))]
    batch_size = batch_size or eval_batch_size(member.image_size, member.mean.device)
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        x = to_model_input(
            pixels,
            device=member.mean.device,
            mean=member.mean,
            std=member.std,
            memory_format=torch.contiguous_format,
        )
        # Flips and rotations commute with per-channel normalisation: apply them on the device.
        total = sum(torch.softmax(member.model(v.on_tensor(x)).float(), dim=1) for v in views)
        outputs.append((total / len(views)).cpu())
    return torch.cat(outputs).numpy()


# --- images ------------------------------------------------------------------------------------


def prepare(
    images: np.ndarray | Sequence[np.ndarray], sizes: Iterable[int]
) -> dict[int, np.ndarray]:
    """``{size: (N, size, size, 3) uint8}`` from a batch or a list of images of any size/mode.

    A uint8 RGB batch already at a size is used as is (training's cached images are); anything
    else is converted like `trainer.images` converts files (alpha on white, 16-bit and float
    scaled; see `trainer.images.array_to_rgb`).
    """
    result = {}
    for size in sizes:
        ready = isinstance(images, np.ndarray) and images.dtype == np.uint8
        if ready and images.shape[1:] == (size, size, 3):
            result[size] = images
            continue
        resized = [resize_array(image, size) for image in images]
        result[size] = np.stack(resized) if resized else np.empty((0, size, size, 3), np.uint8)
    return result


def read_images(
    paths: Sequence[Path], sizes: Sequence[int], *, pool: ThreadPoolExecutor | None = None
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Decode files at every size (as `trainer.images.decode_image` does for training).

    Returns:
        ``({size: (N, size, size, 3) uint8}, {row: reason})``; unreadable rows are black.
    """
    mapper = pool.map if pool is not None else map
    decoded = list(mapper(lambda p: _decode(Path(p), sizes), paths))
    failed = {row: item for row, item in enumerate(decoded) if isinstance(item, str)}
    batch = {}
    for i, size in enumerate(sizes):
        black = np.zeros((size, size, 3), np.uint8)
        rows = [black if isinstance(d, str) else d[i] for d in decoded]
        batch[size] = np.stack(rows) if rows else np.empty((0, size, size, 3), np.uint8)
    return batch, failed


def _decode(path: Path, sizes: Sequence[int]) -> list[np.ndarray] | str:
    try:
        return [decode_image(path, size) for size in sizes]
    except DataError as err:
        cause = err.__cause__
        return unreadable_reason(path, cause) if cause is not None else str(err)


def _decode_threads() -> int:
    # Pillow releases the GIL while decoding and resizing, so threads overlap file reads.
    return max(1, min(8, cpu_count()))
