"""Images per second of an exported ensemble on the CPU: PyTorch (`Ensemble`) vs onnxruntime.

Builds an export-like folder of randomly initialised members (no weights are downloaded), writes
its ``ensemble.onnx`` the way `hpo export` does, checks that both give the same probabilities,
then times batches of 64 uint8 images, interleaved, with the same thread count for both.

    .venv/bin/python bench/onnx_speed.py                      # 5 x resnet10t at 64 px
    .venv/bin/python bench/onnx_speed.py --backbone test_vit --size 32 --members 2 --quick
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from safetensors.torch import save_file

from bench.common import fresh_dir, header, interleaved, median, parser, print_table, set_threads
from trainer.config import TrainConfig
from trainer.inference.ensemble import Ensemble, Manifest, MemberSpec, file_sha256
from trainer.inference.onnx_graph import export_onnx
from trainer.models import build_model, normalization

BATCH = 64


def make_export(folder: Path, config: TrainConfig, members: int, tta: str) -> None:
    """An export folder of ``members`` randomly initialised ``config`` models, 10 classes."""
    (folder / "members").mkdir(parents=True)
    specs = []
    for i in range(members):
        torch.manual_seed(i)
        model = build_model(config, 10).eval()
        path = folder / "members" / f"m{i}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        mean, std = normalization(model)
        digest = file_sha256(path)
        specs.append(
            MemberSpec(f"m{i}", f"members/{path.name}", config.to_dict(), mean, std, digest)
        )
    Manifest(tuple(str(c) for c in range(10)), tuple(specs), tta=tta).write(folder)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--tta", default="none")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.quick:
        args.repeats = 2
    threads = set_threads(args.threads)
    header(
        "ensemble inference on the CPU: PyTorch vs onnxruntime",
        threads,
        [
            f"{args.members} x {args.backbone} at {args.size} px, tta={args.tta}, batch {BATCH}",
            "random weights (speed does not depend on them); median of interleaved repeats",
        ],
    )
    import onnxruntime as ort

    folder = fresh_dir(args.workdir / "onnx-speed")
    config = TrainConfig(backbone=args.backbone, image_size=args.size, pretrained=False)
    make_export(folder, config, args.members, args.tta)
    ensemble = Ensemble.load(folder, device="cpu")
    export_onnx(ensemble, folder / "ensemble.onnx", metadata={"metric": "f1_macro"})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(folder / "ensemble.onnx"), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (BATCH, args.size, args.size, 3)).astype(np.uint8)
    difference = np.abs(session.run(None, {"images": images})[0] - ensemble.predict(images)).max()
    print(f"largest difference of a probability, onnxruntime vs PyTorch: {difference:.1e}\n")
    times = interleaved(
        {
            "pytorch": lambda: ensemble.predict(images),
            "onnxruntime": lambda: session.run(None, {"images": images}),
        },
        warmup=1,
        repeats=args.repeats,
    )
    rows = [[name, median(t), BATCH / median(t)] for name, t in times.items()]
    speedup = median(times["pytorch"]) / median(times["onnxruntime"])
    rows.append(["onnxruntime / pytorch (images/s)", float("nan"), speedup])
    print_table("batch of 64", ["runtime", "seconds per batch", "images per second"], rows)


if __name__ == "__main__":
    main()
