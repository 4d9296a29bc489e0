"""The manifest of an export folder: classes, TTA, and each member's weights and preprocessing.

``manifest.json`` is all that an export folder needs besides the members' safetensors files;
reading it imports neither the models nor the study side.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.augment import tta_views
from trainer.errors import ExportError

MANIFEST = "manifest.json"
# 2: members carry a voting weight (format 1 exports vote equally and still load).
FORMAT = 2
EXPORT_AGAIN = "export the study again with `hpo export STUDY`"


@dataclass(frozen=True)
class MemberSpec:
    """One member as the manifest describes it.

    Attributes:
        name: Short unique name, e.g. ``trial3-fold0``.
        weights: Path of the safetensors file, relative to the export folder.
        config: The resolved `TrainConfig` the member was trained with, as a dict.
        mean: Per-channel normalisation mean for inputs in [0, 1].
        std: Per-channel normalisation std.
        sha256: Hex digest of the weights file (checked on load).
        trial: The Optuna trial number it comes from, if any.
        fold: The fold it was trained on (its validation fold), if any.
        weight: Its share of the soft vote (the members' weights are normalised to sum 1).
        architecture: For an ``hf-hub:`` or ``local-dir:`` backbone, what timm read from its
            source (`trainer.models.resolve_architecture`), so loading needs no hub or folder.
    """

    name: str
    weights: str
    config: Mapping[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sha256: str
    trial: int | None = None
    fold: int | None = None
    weight: float = 1.0
    architecture: Mapping[str, Any] | None = None

    @property
    def image_size(self) -> int:
        """Side of the square input in pixels."""
        return int(self.config["image_size"])

    @property
    def backbone(self) -> str:
        """The timm model name."""
        return str(self.config["backbone"])


@dataclass(frozen=True)
class Manifest:
    """What an export folder holds; ``info`` (study, scores) is free-form, not needed to load."""

    classes: tuple[str, ...]
    members: tuple[MemberSpec, ...]
    tta: str = "none"
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with top-level summaries of backbone, image size and normalisation."""
        return {
            "format": FORMAT,
            "classes": list(self.classes),
            "backbone": _summary(m.backbone for m in self.members),
            "image_size": _summary(m.image_size for m in self.members),
            "mean": _summary(list(m.mean) for m in self.members),
            "std": _summary(list(m.std) for m in self.members),
            "voting": "soft",
            "tta": self.tta,
            "members": [_member_dict(m) for m in self.members],
            **self.info,
        }

    def write(self, folder: Path) -> Path:
        """Write ``manifest.json`` into ``folder``; returns its path."""
        path = Path(folder) / MANIFEST
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """Read and check ``folder/manifest.json``.

        Raises:
            ExportError: The folder or manifest is missing, or the manifest is not valid.
        """
        path = _manifest_path(Path(folder))
        try:
            data = json.loads(path.read_text())
            return _parse_manifest(data)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ExportError(
                f"{path} is not a valid hpo manifest ({type(err).__name__}: {err}); {EXPORT_AGAIN}."
            ) from None


def _summary(values: Iterable[Any]) -> Any:
    unique = [json.loads(v) for v in dict.fromkeys(json.dumps(v) for v in values)]
    return unique[0] if len(unique) == 1 else unique


def _member_dict(member: MemberSpec) -> dict[str, Any]:
    return {
        "name": member.name,
        "weights": member.weights,
        "sha256": member.sha256,
        "trial": member.trial,
        "fold": member.fold,
        "weight": member.weight,
        "mean": list(member.mean),
        "std": list(member.std),
        "config": dict(member.config),
        **({} if member.architecture is None else {"architecture": member.architecture}),
    }


def _manifest_path(folder: Path) -> Path:
    if not folder.is_dir():
        raise ExportError(
            f"Export folder {folder} does not exist; pass the folder `hpo export` wrote "
            "(studies/<study>/export)."
        )
    path = folder / MANIFEST
    if not path.is_file():
        raise ExportError(f"Export folder {folder} has no {MANIFEST}; {EXPORT_AGAIN}.")
    return path


def _parse_manifest(data: dict[str, Any]) -> Manifest:
    if data.get("format", 0) > FORMAT:
        raise ValueError(f"format {data['format']} is newer than this hpo reads ({FORMAT})")
    members = tuple(
        MemberSpec(
            name=str(m["name"]),
            weights=str(m["weights"]),
            config=dict(m["config"]),
            mean=tuple(float(v) for v in m["mean"]),
            std=tuple(float(v) for v in m["std"]),
            sha256=str(m.get("sha256", "")),
            trial=m.get("trial"),
            fold=m.get("fold"),
            weight=float(m.get("weight", 1.0)),
            architecture=_architecture(m.get("architecture")),
        )
        for m in data["members"]
    )
    classes = tuple(str(c) for c in data["classes"])
    if not members or len(classes) < 2:
        raise ValueError("it lists no members or fewer than two classes")
    if any(not m.weight >= 0 for m in members) or not sum(m.weight for m in members) > 0:
        raise ValueError("member weights must be at least 0 and not all 0")
    tta = str(data.get("tta", "none"))
    tta_views(tta)  # an unknown mode is a ConfigError here, not at the first prediction
    return Manifest(classes, members, tta=tta)


def _architecture(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    return {
        "name": str(value["name"]),
        "pretrained_cfg": dict(value["pretrained_cfg"]),
        "model_args": dict(value["model_args"]),
    }


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
