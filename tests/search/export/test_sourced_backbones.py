"""Exports of backbones timm reads from a source (``local-dir:``, ``hf-hub:``) are self-contained.

timm resolves such a name through the source's ``config.json`` even with ``pretrained=False``,
so an export that stored only the name would need the original folder (or the hub) to predict.
The manifest stores the resolved architecture, its pretrained config and its model arguments.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
from huggingface_hub import constants as hub_constants
from PIL import Image

from search.cli.main import main
from search.export.checkpoints import load_oof
from search.study.folder import trial_dir
from trainer.cache import cached_images
from trainer.config import TrainConfig
from trainer.inference.ensemble import Ensemble, Manifest
from trainer.models import build_model, resolve_architecture
from trainer.sources import load_table

COLOURS = {"cat": (200, 60, 50), "dog": (50, 190, 70)}


def image_folder(root: Path, per_class: int = 6) -> Path:
    for label, colour in COLOURS.items():
        for i in range(per_class):
            noise = np.random.default_rng(i).integers(-20, 21, (16, 16, 3))
            pixels = (np.asarray(colour) + noise).clip(0, 255).astype(np.uint8)
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def local_backbone(folder: Path) -> Path:
    """A timm ``local-dir:`` folder (config.json + model.safetensors) of a tiny model.

    Max pooling instead of the model's default average is recorded only in config.json's
    model arguments: a member built without them computes other probabilities (at 64 px;
    at 32 px the last feature map is 1x1, where both poolings agree).
    """
    model = timm.create_model("test_resnet", num_classes=7, global_pool="max")
    timm.models.save_for_hf(model, folder, safe_serialization=True)
    return folder


def test_an_export_of_a_local_dir_backbone_predicts_after_the_folder_is_gone():
    backbone = local_backbone(Path("backbone").resolve())
    image_folder(Path("data"))
    Path("local.py").write_text(
        f'backbone = "local-dir:{backbone}"\npretrained = True\ndata = "data"\nimage_size = 64\n'
        'folds = 2\nepochs = 1\ntracking = "none"\naugment = "none"\nhflip = False\n'
        "batch_size = 8\n"
    )
    assert main(["run", "local.py", "--trials", "1"]) == 0
    export = Path("studies/local/export")
    (member, *_) = json.loads((export / "manifest.json").read_text())["members"]
    assert member["architecture"]["name"] == "test_resnet"
    assert member["architecture"]["model_args"]["global_pool"] == "max"
    assert "file" not in member["architecture"]["pretrained_cfg"]  # nothing points back
    shutil.rmtree(backbone)

    # Each member, given its validation fold, gives back the probabilities saved in training
    # (built from the folder): the same architecture, pooling included.
    ensemble = Ensemble.load(export)
    images = cached_images(load_table("data"), 64, progress=False).images
    for i, spec in enumerate(Manifest.read(export).members):
        indices, _, stored = load_oof(trial_dir(Path("studies/local"), spec.trial), spec.fold)
        probs = ensemble.member_probs(images[indices], tta="none")[i]
        np.testing.assert_allclose(probs, stored, atol=1e-5)
    assert main(["predict", str(export), "data", "--out", "predictions.csv"]) == 0
    assert len(pd.read_csv("predictions.csv")) == 12


def test_an_hf_hub_backbone_is_built_from_its_stored_architecture_without_the_hub(
    tmp_path, monkeypatch
):
    """Offline, from a Hugging Face cache holding the repo's config.json, then from no cache."""
    repo = tmp_path / "hub" / "models--someone--tiny-net"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    config = {
        "architecture": "test_resnet",
        "num_classes": 7,
        "model_args": {"global_pool": "max"},
        "pretrained_cfg": {"input_size": [3, 160, 160], "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    (snapshot / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    backbone = TrainConfig(backbone="hf-hub:someone/tiny-net", image_size=64)
    architecture = resolve_architecture(backbone.backbone)
    assert architecture["name"] == "test_resnet"
    assert "hf_hub_id" not in architecture["pretrained_cfg"]
    assert json.loads(json.dumps(architecture)) == architecture  # goes into manifest.json

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    model = build_model(backbone, 2, architecture=architecture)
    assert model.global_pool.pool_type == "max" and model.num_classes == 2
    with pytest.raises(Exception, match="cannot find the requested files in the local cache"):
        build_model(backbone, 2)  # what loading an export did before it stored the architecture
