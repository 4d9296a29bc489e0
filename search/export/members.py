"""An export's members: the chosen trials' fold models, copied with their share of the vote."""

from __future__ import annotations

import shutil
from pathlib import Path

from optuna.trial import FrozenTrial

from search import keys
from search.export.candidates import metric_of
from search.export.checkpoints import weights_path
from search.export.study_source import StudySource
from search.study.folder import trial_dir
from trainer.config import TrainConfig
from trainer.inference.ensemble import Manifest, MemberSpec, file_sha256
from trainer.models import build_model, normalization, resolve_architecture

MEMBERS = "members"


def write_members(
    source: StudySource,
    trials: list[FrozenTrial],
    counts: tuple[int, ...],
    staging: Path,
    tta: str,
    mode: str,
) -> Manifest:
    """Copy the chosen trials' fold weights; a trial's share of the vote is split over its folds."""
    (staging / MEMBERS).mkdir(parents=True)
    classes = tuple(source.study.user_attrs[keys.CLASSES_ATTR])
    total = sum(counts)
    specs = []
    for trial, count in zip(trials, counts, strict=True):
        if count:
            share = count / total / source.settings.folds
            specs += trial_members(source, trial, len(classes), share, staging)
    info = {
        "study": source.place.name,
        "metric": metric_of(trials),
        "trials": [t.number for t, c in zip(trials, counts, strict=True) if c],
        "ensemble": {
            "mode": mode,
            "candidates": [t.number for t in trials],
            "counts": list(counts),
        },
    }
    manifest = Manifest(classes, tuple(specs), tta=tta, info=info)
    manifest.write(staging)
    return manifest


def trial_members(
    source: StudySource, trial: FrozenTrial, classes: int, weight: float, staging: Path | None
) -> list[MemberSpec]:
    """The fold models of ``trial``: copied into ``staging``, or read where they are (None)."""
    config = TrainConfig(**trial.user_attrs[keys.CONFIG_ATTR])
    # Stored so that the export predicts without the hub or folder an hf-hub: or local-dir:
    # backbone came from (timm reads its config.json even without weights).
    architecture = resolve_architecture(config.backbone)
    # The normalisation the trainer used; building without weights downloads nothing.
    model = build_model(config.replace(pretrained=False), classes, architecture=architecture)
    mean, std = normalization(model)
    specs = []
    for fold in range(source.settings.folds):
        name = f"trial{trial.number}-fold{fold}"
        checkpoint = weights_path(trial_dir(source.place.folder, trial.number), fold)
        if staging is None:
            where, digest = str(checkpoint), ""
        else:
            copy = staging / MEMBERS / f"{name}.safetensors"
            shutil.copyfile(checkpoint, copy)
            where, digest = f"{MEMBERS}/{copy.name}", file_sha256(copy)
        specs.append(
            MemberSpec(
                name,
                where,
                config.to_dict(),
                mean,
                std,
                digest,
                trial=trial.number,
                fold=fold,
                architecture=architecture,
                weight=weight,
            )
        )
    return specs
