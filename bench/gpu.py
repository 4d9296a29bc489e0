"""GPU: training throughput of hpo's step vs a bare loop, and how busy a real study keeps the GPU.

Part 1, throughput (img/s) for resnet18, resnet50, efficientnet_b0 and convnext_tiny at 224 px,
batch 128, 1000 classes, AdamW, in fp32 (NCHW) and in mixed precision (bf16, else fp16,
autocast) with channels_last, through

- ``hpo``: the loop's step machinery (``trainer.loop._prepare`` + ``_train_epoch``) fed with
  pinned uint8 NHWC host batches, exactly what its DataLoader yields (so it pays the host-to-
  device copy and the normalisation on the GPU);
- ``bare``: ``zero_grad; autocast(model(x)); backward; step`` on float batches already on the
  GPU, the way timm's benchmark.py measures training (its CSV fields are used as column names).

``torch.backends.cudnn.benchmark`` is on for the sweep, as in timm's benchmark.py and as hpo itself
sets it on CUDA (``trainer.device.resolve_runtime``); one extra row per model shows hpo's
mixed-precision step with it off, what cuDNN's autotuning is worth.

Part 2, a short `hpo run` study (real data path: generated ~500x375 JPEGs -> cache -> workers
-> augmentation) under torch.profiler, reporting the share of wall time in which a GPU kernel
was running (union of kernel intervals / wall).

The whole script keeps to an 8-minute budget (``--budget``) and skips what would not fit.
Without a CUDA GPU it prints why and exits 0; ``--cpu-smoke`` runs every code path on the CPU
with tiny models instead (for checking the script, not for figures).

    .venv/bin/python bench/gpu.py [--quick] [--budget 480] [--cpu-smoke]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gc
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

from bench import common
from bench.photos import make_photos
from trainer.cache import CachedImages
from trainer.config import TrainConfig
from trainer.device import resolve_runtime, seed_everything
from trainer.loop import _prepare, _train_epoch
from trainer.types import Split

MODELS = ("resnet18", "resnet50", "efficientnet_b0", "convnext_tiny")
STUDY_RESERVE_S = 150.0  # kept free for part 2 while part 1 runs
_HEADERS = ("model", "path", "precision", "format", "train_batch_size", "train_img_size")
_HEADERS += ("train_samples_per_sec", "train_step_time ms", "peak GiB")
_RATIO_HEADERS = ("model", "amp/fp32 hpo", "amp/fp32 bare", "hpo/bare fp32", "hpo/bare amp")
_RATIO_HEADERS += ("cudnn.benchmark off/on (hpo amp)",)


@dataclass(frozen=True)
class Setup:
    """What one invocation measures."""

    device: torch.device
    models: tuple[str, ...]
    size: int
    batch: int
    classes: int
    warmup: int
    steps: int
    study_backbones: tuple[str, ...]
    study_size: int
    study_per_class: int
    study_folds: int
    study_epochs: int
    study_trials: int


FULL = Setup(
    device=torch.device("cuda"),
    models=MODELS,
    size=224,
    batch=128,
    classes=1000,
    warmup=10,
    steps=30,
    study_backbones=("resnet18", "efficientnet_b0"),
    study_size=224,
    study_per_class=200,
    study_folds=3,
    study_epochs=3,
    study_trials=3,
)


def setup_for(args) -> Setup:
    """The measurement plan: full, quick, or the CPU smoke check."""
    if args.cpu_smoke:
        return replace(
            FULL,
            device=torch.device("cpu"),
            models=("test_resnet", "test_convnext"),
            size=64,
            batch=16,
            classes=10,
            warmup=1,
            steps=2,
            study_backbones=("test_resnet",),
            study_size=32,
            study_per_class=6,
            study_folds=2,
            study_epochs=1,
            study_trials=2,
        )
    if args.quick:
        return replace(
            FULL,
            models=("resnet18",),
            warmup=3,
            steps=5,
            study_backbones=("resnet18",),
            study_size=128,
            study_per_class=20,
            study_folds=2,
            study_epochs=1,
            study_trials=2,
        )
    return FULL


class Clock:
    """Seconds left of the script's budget."""

    def __init__(self, budget: float) -> None:
        self.start, self.budget = time.perf_counter(), budget

    def left(self) -> float:
        """Budget seconds not yet used."""
        return self.budget - (time.perf_counter() - self.start)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release() -> None:
    """Free the previous measurement's tensors before the next one allocates."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float:
    """Peak GPU memory allocated since the last `release`, in GiB (NaN on the CPU)."""
    return (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )


# --- part 1: throughput ------------------------------------------------------------------------


def host_batches(s: Setup, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Distinct uint8 NHWC batches on the host, pinned as hpo's loader pins them for CUDA."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        x = torch.randint(0, 256, (s.batch, s.size, s.size, 3), dtype=torch.uint8, generator=g)
        y = torch.randint(0, s.classes, (s.batch,), generator=g)
        pin = s.device.type == "cuda"
        out.append((x.pin_memory() if pin else x, y.pin_memory() if pin else y))
    return out


def _cycle(batches: list, n: int) -> list:
    return [batches[i % len(batches)] for i in range(n)]


def hpo_step(s: Setup, model: str, amp: bool) -> tuple[float, str, float]:
    """img/s of hpo's ``_train_epoch``; also the precision it chose and the peak memory."""
    config = TrainConfig(
        backbone=model,
        image_size=s.size,
        batch_size=s.batch,
        epochs=1,
        augment="none",
        device=s.device.type,
        amp=amp,
        channels_last=amp,
        num_workers=0,
    )
    wanted = torch.backends.cudnn.benchmark
    runtime = resolve_runtime(config)
    # resolve_runtime turns cuDNN autotuning on for CUDA; keep the sweep's setting for this row.
    torch.backends.cudnn.benchmark = wanted
    count = s.batch * (s.warmup + s.steps)
    labels = np.arange(count) % s.classes
    # The step never reads the cached pixels: it is fed the host batches below.
    data = CachedImages(
        np.zeros((1, 1, 1, 3), np.uint8), labels, tuple(map(str, range(s.classes))), None, 0, None
    )
    seed_everything(0)
    fold = _prepare(config, data, Split(0, np.arange(count), np.arange(0)), runtime)
    batches = host_batches(s)
    _train_epoch(fold, _cycle(batches, s.warmup), runtime, config, 0)
    sync(s.device)
    start = time.perf_counter()
    _train_epoch(fold, _cycle(batches, s.steps), runtime, config, 1)  # ends with .item(): synced
    sync(s.device)
    elapsed = time.perf_counter() - start
    precision = _precision(runtime.amp_dtype)
    return s.batch * s.steps / elapsed, precision, peak_gib(s.device)


def bare_step(s: Setup, model_name: str, amp_dtype: torch.dtype | None) -> tuple[float, float]:
    """img/s of a bare timm training loop on GPU-resident float batches; and peak memory."""
    import timm

    fmt = torch.channels_last if amp_dtype is not None else torch.contiguous_format
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=s.classes)
    model = model.to(s.device, memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler(s.device.type) if amp_dtype == torch.float16 else None
    criterion = torch.nn.CrossEntropyLoss()
    xs = [
        torch.randn(s.batch, 3, s.size, s.size, device=s.device).contiguous(memory_format=fmt)
        for _ in range(2)
    ]
    ys = [torch.randint(0, s.classes, (s.batch,), device=s.device) for _ in range(2)]
    cast = (
        torch.autocast(s.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    )

    def step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with cast:
            loss = criterion(model(xs[i % 2]), ys[i % 2])
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    for i in range(s.warmup):
        step(i)
    sync(s.device)
    start = time.perf_counter()
    for i in range(s.steps):
        step(i)
    sync(s.device)
    return s.batch * s.steps / (time.perf_counter() - start), peak_gib(s.device)


def _precision(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def amp_dtype_of(s: Setup) -> torch.dtype | None:
    """The autocast dtype hpo picks on this device (bf16 where supported, else fp16)."""
    config = TrainConfig(device=s.device.type, amp=True, num_workers=0)
    return resolve_runtime(config).amp_dtype


def throughput(s: Setup, clock: Clock) -> tuple[list[list], list[str]]:
    """Part 1: every model, precision and path that fits the budget."""
    rows, skipped = [], []
    amp = amp_dtype_of(s)
    plans = []
    for model in s.models:
        for use_amp in (False, True):
            plans += [(model, use_amp, "bare", True), (model, use_amp, "hpo", True)]
        plans.append((model, True, "hpo", False))  # cudnn.benchmark off, for comparison
    for model, use_amp, path, bench_mode in plans:
        if clock.left() < STUDY_RESERVE_S + 20:
            skipped.append(f"{model} {path} {'amp' if use_amp else 'fp32'}")
            continue
        torch.backends.cudnn.benchmark = bench_mode
        release()
        try:
            if path == "hpo":
                rate, precision, peak = hpo_step(s, model, use_amp)
            else:
                rate, peak = bare_step(s, model, amp if use_amp else None)
                precision = _precision(amp if use_amp else None)
        except Exception as err:  # one model failing (e.g. out of memory) must not end the sweep
            print(f"  {model} {path}: failed: {type(err).__name__}: {err}", flush=True)
            rate, precision, peak = float("nan"), "failed", float("nan")
        fmt = "NHWC" if use_amp else "NCHW"
        label = path if bench_mode else f"{path} (cudnn.benchmark off)"
        row = [model, label, precision, fmt, s.batch, s.size, rate, 1000 * s.batch / rate, peak]
        print("  measured:", " | ".join(common.cell(v) for v in row), flush=True)
        rows.append(row)
    torch.backends.cudnn.benchmark = False
    return rows, skipped


def summary(rows: list[list]) -> list[list]:
    """Per model: mixed-precision speed-up of each path, and hpo / bare at each precision."""
    rate = {(r[0], r[1], r[3]): r[6] for r in rows}
    out = []
    for model in dict.fromkeys(r[0] for r in rows):
        get = lambda path, fmt, m=model: rate.get((m, path, fmt), float("nan"))  # noqa: E731
        out.append(
            [
                model,
                common.ratio(get("hpo", "NHWC"), get("hpo", "NCHW")),
                common.ratio(get("bare", "NHWC"), get("bare", "NCHW")),
                common.ratio(get("hpo", "NCHW"), get("bare", "NCHW")),
                common.ratio(get("hpo", "NHWC"), get("bare", "NHWC")),
                common.ratio(get("hpo (cudnn.benchmark off)", "NHWC"), get("hpo", "NHWC")),
            ]
        )
    return out


# --- part 2: how busy a real study keeps the GPU -------------------------------------------------

_SPACE = """\
from search.space import choice, loguniform

data = {data!r}
image_size = {size}
folds = {folds}
epochs = {epochs}
trials = {trials}
tracking = "none"
augment = "light"
batch_size = 64
backbone = choice({backbones})
lr = loguniform(3e-4, 3e-3)
"""


def device_busy(prof) -> tuple[float, float]:
    """Seconds in which any kernel ran, and in which any copy or memset ran (interval unions)."""
    from torch.autograd import DeviceType

    kernels, copies = [], []
    for event in prof.profiler.kineto_results.events():
        if event.device_type() != DeviceType.CUDA:
            continue
        interval = (event.start_ns(), event.start_ns() + event.duration_ns())
        is_copy = event.name().startswith(("Memcpy", "Memset"))
        (copies if is_copy else kernels).append(interval)
    return _union_ns(kernels) / 1e9, _union_ns(copies) / 1e9


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total, end = total + stop - start, stop
        elif stop > end:
            total, end = total + stop - end, stop
    return total


def study_share(s: Setup, workdir: Path, *, timeout: float) -> list[list]:
    """Part 2: run a short study under the profiler; report GPU busy time against wall time."""
    from torch.profiler import ProfilerActivity, profile

    from search.context import RunRequest
    from search.engine.run import run

    photos = make_photos(
        workdir / f"photos-5x{s.study_per_class}", per_class=s.study_per_class, n_jobs=-1
    )
    folder = common.fresh_dir(workdir / "gpu-study")
    space = folder / "gpu_space.py"
    backbones = ", ".join(repr(b) for b in s.study_backbones)
    space.write_text(
        _SPACE.format(
            data=str(photos),
            size=s.study_size,
            folds=s.study_folds,
            epochs=s.study_epochs,
            trials=s.study_trials,
            backbones=backbones,
        )
    )
    cuda = s.device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    here = Path.cwd()
    os.chdir(folder)  # the study, its storage and its image cache live in studies/ under here
    try:
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            trials, name = s.study_trials, "gpu-share"
            run(RunRequest(str(space), trials=trials, timeout=timeout, study=name, export=False))
            sync(s.device)
            wall = time.perf_counter() - start
    finally:
        os.chdir(here)
    kernels, copies = device_busy(prof)  # zero on the CPU smoke check: no CUDA events
    study = common.read_study(folder, "gpu-share")
    return [
        [
            "study",
            f"{study.finished} trials, {study.epochs} epochs, {5 * s.study_per_class} "
            f"photos at {s.study_size}px, {s.study_folds} folds",
        ],
        ["wall seconds (profiled, incl. cache build)", wall],
        ["GPU kernel-busy seconds", kernels],
        ["GPU copy/memset seconds", copies],
        ["kernel-busy share of wall", common.ratio(kernels, wall)],
    ]


def _quiet_libraries() -> None:
    # As `hpo run` does: the study runs in this process, so Optuna's notices would land here.
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def main(argv: list[str] | None = None) -> int:
    """Command line: run both parts (or explain why not) and print the tables."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--budget", type=float, default=450.0, help="seconds for both parts (imports excluded)"
    )
    p.add_argument("--cpu-smoke", action="store_true", help="check the code paths on the CPU")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(
            "bench/gpu.py: no CUDA GPU on this machine; skipped (nothing measured). Run it on a "
            "machine with a CUDA GPU, or pass --cpu-smoke to check its code paths on the CPU."
        )
        return 0
    clock, s = Clock(args.budget), setup_for(args)
    _quiet_libraries()
    threads = common.set_threads(args.threads)
    notes = [
        f"{s.size}px, batch {s.batch}, {s.classes} classes, AdamW, {s.warmup} warm-up + "
        f"{s.steps} timed steps per row; pretrained=False",
        f"float32 matmul precision {torch.get_float32_matmul_precision()!r}; cudnn.allow_tf32 "
        f"{torch.backends.cudnn.allow_tf32}",
    ]
    if args.cpu_smoke:
        notes.append("CPU SMOKE CHECK: tiny models on the CPU; the figures mean nothing")
    common.header(
        "gpu: training throughput (hpo step vs bare loop) and study GPU share", threads, notes
    )
    rows, skipped = throughput(s, clock)
    common.print_table("Training throughput (timm benchmark.py fields)", _HEADERS, rows)
    title = "Ratios (goal: hpo / bare close to 1; mixed precision well above 1)"
    common.print_table(title, _RATIO_HEADERS, summary(rows))
    if skipped:
        print(f"skipped for the time budget: {', '.join(skipped)}\n")
    status = 0
    if clock.left() < 60:
        print("part 2 skipped: less than 60 s of the budget left")
        return status
    try:
        common.print_table(
            "GPU share of a short study",
            ["what", "value"],
            study_share(s, args.workdir.absolute(), timeout=max(30.0, clock.left() - 60)),
        )
    except Exception:  # report part 1 even if part 2 fails, but do not hide the failure
        traceback.print_exc()
        status = 1
    print(f"total seconds: {time.perf_counter() - clock.start:.0f} of a {args.budget:.0f} s budget")
    return status


if __name__ == "__main__":
    sys.exit(main())
