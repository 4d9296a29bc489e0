"""A hand-written fine-tuning script of the tutorial kind: the baseline of bench/transfer_study.py.

What a practitioner writes without a search tool: one configuration (AdamW at 1e-3, cosine
schedule, label smoothing 0.1, random crops and flips), the whole network fine-tuned from
ImageNet weights, 5-fold stratified cross-validation, and the test images predicted by the soft
vote of the 5 fold models. Only plain torch, timm, Pillow and scikit-learn: no hpo code, so it
pays for its own decoding. The epochs per fold are as many as fit in ``--seconds`` (measured on
the first epoch).

    .venv/bin/python bench/transfer_script.py train.csv test.csv --weights lite0.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from sklearn.model_selection import StratifiedKFold

BACKBONE = "tf_efficientnet_lite0"
FOLDS = 5


def load(csv: Path, size: int, classes: list[str] | None = None):
    """Images of ``csv`` as a float tensor (N, 3, size, size) in [0, 1], labels, classes."""
    table = pd.read_csv(csv)
    classes = classes or sorted(table["label"].astype(str).unique())
    pixels = [
        np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
        for p in table["path"]
    ]
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor([classes.index(str(c)) for c in table["label"]])
    return x, y, classes


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random flips and random crops with 4 px of padding, per batch."""
    if torch.rand(()) < 0.5:
        x = x.flip(3)
    pad = F.pad(x, (4, 4, 4, 4), mode="reflect")
    i, j = torch.randint(0, 9, (2,))
    return pad[:, :, i : i + x.shape[2], j : j + x.shape[3]]


def new_model(weights: Path, classes: int) -> torch.nn.Module:
    model = timm.create_model(BACKBONE, num_classes=classes)
    state = {k: v for k, v in load_file(weights).items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=False)
    return model


def train_fold(model, x, y, *, epochs: int, norm, batch: int = 32) -> None:
    """AdamW with a cosine schedule over ``epochs`` epochs."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    steps = epochs * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(model(norm(augment(x[idx]))), y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def predict(model, x, norm) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(norm(x[i : i + 128])).softmax(1) for i in range(0, len(x), 128)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train", type=Path)
    p.add_argument("test", type=Path)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seconds", type=float, default=600, help="wall time to fill")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    x, y, classes = load(args.train, args.size)
    x_test, y_test, _ = load(args.test, args.size, classes)
    model = new_model(args.weights, len(classes))
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)

    def norm(t):
        return (t - mean) / std

    splits = list(StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(x, y))
    tick = time.perf_counter()
    train_fold(model, x[splits[0][0]], y[splits[0][0]], epochs=1, norm=norm)
    epoch = time.perf_counter() - tick  # one epoch of one fold, predictions not counted
    left = args.seconds - (time.perf_counter() - start)
    epochs = max(1, int(left / (FOLDS * epoch * 1.15)))  # room for predicting
    votes, cv = torch.zeros(len(x_test), len(classes)), []
    for fold, (tr, va) in enumerate(splits):
        model = new_model(args.weights, len(classes))
        train_fold(model, x[tr], y[tr], epochs=epochs, norm=norm)
        cv.append(float((predict(model, x[va], norm).argmax(1) == y[va]).float().mean()))
        votes += predict(model, x_test, norm)
        print(f"fold {fold}: {epochs} epochs, accuracy {cv[-1]:.3f}", flush=True)
    accuracy = float((votes.argmax(1) == y_test).float().mean())
    result = {"accuracy": accuracy, "cv": float(np.mean(cv)), "epochs": epochs}
    args.json.write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
