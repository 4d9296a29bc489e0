"""A deterministic, photo-like image dataset for benchmarks: a folder of class subfolders.

Each class is one kind of textured object (a disc, stripes, a checkerboard, ...) drawn at a random
position, scale, rotation and colour over a random gradient background with blotchy lighting,
distractor shapes and sensor noise, then saved as a JPEG of about 500x375 at quality 90. Colour
says nothing about the class, and at small input sizes several textures alias into each other,
so the classes are learnable but not trivially so. Decoding such a JPEG costs about what a real
photo of the same size costs, which is what the data-path benchmarks need.

    .venv/bin/python bench/photos.py /tmp/photos --per-class 100 --classes 5
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

KINDS: tuple[str, ...] = (
    "disc",
    "ring",
    "stripes",
    "checker",
    "triangle",
    "cross",
    "blobs",
    "wave",
)
"""Class names in order; ``classes=n`` uses the first n."""

_MANIFEST = ".photos.json"  # hidden: hpo and ImageFolder-style loaders skip dot files
_QUALITY = 90
_SIZE_JITTER = 0.08  # real photo sets are "about" one size, not exactly one size

Mask = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def make_photos(
    root: str | Path,
    *,
    per_class: int,
    classes: int = 5,
    size: tuple[int, int] = (500, 375),
    seed: int = 0,
    n_jobs: int = 1,
) -> Path:
    """Write ``classes * per_class`` JPEGs into ``root/<class>/`` (reused when already there).

    Args:
        root: Folder to create; it must be empty or hold an earlier set made by this function.
        per_class: Images per class.
        classes: Number of classes, 2 to ``len(KINDS)``.
        size: Nominal (width, height); each image varies by up to 8% around it.
        seed: Every pixel depends only on ``seed``, the class and the image's index.
        n_jobs: Processes used to draw (joblib's convention; 1 draws in this process).

    Returns:
        ``root`` as an absolute path.

    Raises:
        ValueError: For impossible arguments, or a non-empty ``root`` that holds something else.
    """
    if not 2 <= classes <= len(KINDS) or per_class < 1:
        raise ValueError(f"classes must be 2..{len(KINDS)} and per_class at least 1.")
    root = Path(root).absolute()
    wanted = {"per_class": per_class, "classes": classes, "size": list(size), "seed": seed}
    if _already_made(root, wanted):
        return root  # same files, same mtimes: hpo's image cache stays valid
    if root.exists() and any(root.iterdir()) and not (root / _MANIFEST).exists():
        raise ValueError(f"{root} is not empty and was not made by make_photos; pick a new folder.")
    jobs = [(root, c, i, size, seed) for c in range(classes) for i in range(per_class)]
    if n_jobs == 1:
        for job in jobs:
            _write(*job)
    else:
        from joblib import Parallel, delayed

        Parallel(n_jobs=n_jobs, batch_size=16)(delayed(_write)(*job) for job in jobs)
    (root / _MANIFEST).write_text(json.dumps(wanted))
    return root


def _already_made(root: Path, wanted: dict) -> bool:
    try:
        made = json.loads((root / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    count = sum(1 for _ in root.glob("*/*.jpg"))
    return made == wanted and count == wanted["per_class"] * wanted["classes"]


def _write(root: Path, label: int, index: int, size: tuple[int, int], seed: int) -> None:
    kind = KINDS[label]
    pixels = draw(kind, size, np.random.default_rng([seed, label, index]))
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / f"{kind}_{index:04d}.jpg", quality=_QUALITY)


def draw(kind: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One image of class ``kind`` as an (H, W, 3) uint8 array."""
    width, height = (round(s * rng.uniform(1 - _SIZE_JITTER, 1 + _SIZE_JITTER)) for s in size)
    canvas = _background(width, height, rng)
    for _ in range(rng.integers(1, 4)):  # distractors: plain ellipses, in every class
        mask = _placed(_disc, width, height, rng, scale=(0.04, 0.12))
        colour = _colour(rng)
        _paint(canvas, mask, (colour, colour), alpha=rng.uniform(0.3, 0.8))
    mask = _placed(_SHAPES[kind], width, height, rng, scale=(0.15, 0.38))
    _paint(canvas, mask, _two_tone(rng), alpha=rng.uniform(0.75, 1.0))
    canvas *= _lighting(width, height, rng)
    canvas += rng.normal(0.0, rng.uniform(3.0, 10.0), canvas.shape)  # sensor noise
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A two-colour linear gradient at a random angle with smooth blotches."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x + np.sin(angle) * y) / max(width, height)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    a, b = _colour(rng), _colour(rng)
    canvas = a + t[..., None] * (b - a)
    return canvas + 25.0 * _smooth_noise(width, height, rng, cells=6)[..., None]


def _smooth_noise(width: int, height: int, rng: np.random.Generator, *, cells: int) -> np.ndarray:
    """Noise in [-1, 1] that varies over about ``cells`` blobs across the image."""
    coarse = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(smooth, dtype=np.float32) / 127.5 - 1.0


def _lighting(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A multiplicative illumination field (vignetting and uneven light)."""
    field = 1.0 + rng.uniform(0.05, 0.2) * _smooth_noise(width, height, rng, cells=3)
    return field[..., None]


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, 3).astype(np.float32)


def _two_tone(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The object's two colours, far enough apart that its texture stays visible."""
    first, second = _colour(rng), _colour(rng)
    while np.abs(first - second).sum() < 150:
        second = _colour(rng)
    return first, second


def _paint(
    canvas: np.ndarray, mask: np.ndarray, tones: tuple[np.ndarray, np.ndarray], *, alpha: float
) -> None:
    """Blend into ``canvas``: mask 1 takes the first tone, mask 2 the second, 0 nothing."""
    cover = (mask > 0)[..., None] * np.float32(alpha)
    tone = tones[0] + (mask >= 2)[..., None] * (tones[1] - tones[0])
    canvas += cover * (tone - canvas)


def _placed(
    shape: Mask,
    width: int,
    height: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float],
) -> np.ndarray:
    """``shape`` drawn in object coordinates (u, v in about [-1, 1]) at a random pose."""
    radius = rng.uniform(*scale) * min(width, height)
    cx = rng.uniform(0.2, 0.8) * width
    cy = rng.uniform(0.2, 0.8) * height
    angle = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.75, 1.33)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = (x - cx) / radius, (y - cy) / radius
    u = (np.cos(angle) * dx + np.sin(angle) * dy) * aspect
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / aspect
    return shape(u, v, rng)


# Shape masks: 0 outside, 1 for the first tone, 2 for the second (textures use both).


def _disc(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (u * u + v * v < 1).astype(np.float32)


def _ring(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = np.sqrt(u * u + v * v)
    inner = rng.uniform(0.45, 0.7)
    return ((r < 1) & (r > inner)).astype(np.float32)


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) < 0.85) & (np.abs(v) < 0.85)


def _stripes(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    frequency = rng.uniform(3.0, 6.0) * np.pi
    second = np.sin(u * frequency) > 0
    return _square(u, v) * (1.0 + second)


def _checker(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cells = rng.uniform(2.5, 4.5)
    second = (np.floor(u * cells) + np.floor(v * cells)) % 2 == 1
    return _square(u, v) * (1.0 + second)


def _triangle(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):  # three half-planes of an equilateral triangle
        angle = np.pi / 2 + k * 2 * np.pi / 3
        inside &= np.cos(angle) * u + np.sin(angle) * v < 0.5
    return inside.astype(np.float32)


def _cross(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    arm = rng.uniform(0.18, 0.32)
    bars = (np.abs(u) < arm) | (np.abs(v) < arm)
    return (bars & (np.abs(u) < 1) & (np.abs(v) < 1)).astype(np.float32)


def _blobs(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros_like(u)
    for _ in range(rng.integers(5, 10)):
        bu, bv, r = rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), rng.uniform(0.12, 0.25)
        mask = np.maximum(mask, ((u - bu) ** 2 + (v - bv) ** 2 < r * r).astype(np.float32))
    return mask


def _wave(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    amplitude, frequency = rng.uniform(0.2, 0.4), rng.uniform(2.0, 4.0)
    band = np.abs(v - amplitude * np.sin(frequency * u)) < rng.uniform(0.15, 0.25)
    return (band & (np.abs(u) < 1)).astype(np.float32)


_SHAPES: dict[str, Mask] = {
    "disc": _disc,
    "ring": _ring,
    "stripes": _stripes,
    "checker": _checker,
    "triangle": _triangle,
    "cross": _cross,
    "blobs": _blobs,
    "wave": _wave,
}


def main(argv: list[str] | None = None) -> int:
    """Command line: write a photo set and print where it is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder to write (class subfolders are created inside)")
    parser.add_argument("--per-class", type=int, default=100, help="images per class")
    parser.add_argument("--classes", type=int, default=5, help=f"2..{len(KINDS)}")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="processes (-1: every core)")
    parser.add_argument("--quick", action="store_true", help="10 images per class")
    args = parser.parse_args(argv)
    per_class = 10 if args.quick else args.per_class
    root = make_photos(
        args.root,
        per_class=per_class,
        classes=args.classes,
        size=(args.width, args.height),
        seed=args.seed,
        n_jobs=args.jobs,
    )
    print(f"{per_class * args.classes} JPEGs in {args.classes} classes: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
