"""Ensemble members and images the ensemble and ONNX tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from trainer.config import TrainConfig
from trainer.inference.ensemble import MemberSpec, file_sha256
from trainer.models import build_model, normalization


def member(folder: Path, name: str, config: TrainConfig, seed: int, classes: int = 3):
    """A randomly initialised model saved as a member; returns (spec, model)."""
    torch.manual_seed(seed)
    model = build_model(config, classes).eval()
    with torch.no_grad():  # larger head weights: predictions far from uniform, TTA visible
        model.get_classifier().weight.mul_(20)
    (folder / "members").mkdir(parents=True, exist_ok=True)
    weights = folder / "members" / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    mean, std = normalization(model)
    spec = MemberSpec(
        name,
        f"members/{weights.name}",
        config.to_dict(),
        mean,
        std,
        file_sha256(weights),
        trial=0,
        fold=seed,
    )
    return spec, model


def asymmetric_images(n: int = 4, size: int = 32) -> np.ndarray:
    """Random dark images with a bright left band: flipping them changes them."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    images[:, :, : size // 3] = 230  # a bright left band: flipping moves it
    return images
