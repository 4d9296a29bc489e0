"""The trainer's only input: one frozen `TrainConfig`.

Every field but ``metric`` and ``seed`` (study settings, see `TrainConfig`) can be fixed or
searched in a space file. ``None`` means "the library's default",
resolved at training time (for example the device, mixed precision or loader workers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from trainer import checks
from trainer.errors import ConfigError

Loss = Literal["ce", "focal", "label_smoothing"]
Optimizer = Literal["adamw", "adam", "sgd"]
Scheduler = Literal["cosine", "step", "plateau", "none"]
Augment = Literal["none", "light", "medium", "heavy"]
Finetune = Literal["full", "head", "probe_full"]
Metric = Literal["f1_macro", "accuracy", "log_loss"]
Tta = Literal["none", "hflip", "flip4", "d4"]
# False, True (timm's hub weights), a weights file, or a weights file (or True) per backbone.
Pretrained = bool | str | dict[str, bool | str]
# Names of the test-time augmentation modes (`trainer.augment.tta_views` defines their views);
# here so that the study side can check a setting without importing albumentations.
TTA_MODES: tuple[str, ...] = get_args(Tta)

# Here, not in trainer.metrics, so that the study side reads a direction without scikit-learn.
DIRECTIONS: dict[str, str] = {
    "f1_macro": "maximize",
    "accuracy": "maximize",
    "log_loss": "minimize",
}
"""Whether a larger (``maximize``) or smaller (``minimize``) value of each metric is better."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that decides how one fold model is trained.

    Attributes:
        backbone: Any `timm` model name.
        pretrained: False, True (timm's hub weights) or a path to a local weights file
            (.safetensors or .pth); or a dict from backbone name to its weights file (or True),
            so that a searched backbone finds its own weights offline (see `weights_for`).
        finetune: ``full`` trains every weight; ``head`` freezes the backbone and fits a linear
            head to convergence on its cached features (`trainer.features`); ``probe_full``
            fits that head first, then trains every weight starting from it (LP-FT).
        image_size: Side of the square input in pixels.
        epochs: Maximum epochs per fold.
        batch_size: Samples per optimizer step (before gradient accumulation).
        grad_accum: Batches accumulated per optimizer step.
        lr: Peak learning rate.
        optimizer: ``adamw``, ``adam`` or ``sgd``.
        weight_decay: Decoupled (AdamW) or L2 (Adam, SGD) weight decay of trained weights
            (``full``, and ``probe_full`` after its probe).
        probe_l2: L2 strength of the linear probe that ``head`` and ``probe_full`` fit on
            cached features: the fit minimises the mean training loss plus
            ``probe_l2 / 2 * ||W||^2``. The default, 0.5, beat scikit-learn's
            ``LogisticRegression()`` on the same frozen features at 20, 50 and 100 images per
            class in bench/transfer.py (CIFAR-10 subset, tf_efficientnet_lite0); 0.01, the
            ``weight_decay`` default that the probe used before, fell below it.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        scheduler: ``cosine`` (with warmup), ``step``, ``plateau`` or ``none``.
        warmup_epochs: Linear warmup length for ``cosine``, in epochs (may be fractional).
        step_size: Epochs between decays for ``step``.
        step_gamma: Decay factor for ``step`` and ``plateau``.
        loss: ``ce``, ``focal`` or ``label_smoothing``.
        focal_gamma: Focusing parameter of the focal loss.
        label_smoothing: Smoothing for ``label_smoothing`` (ignored by the other losses).
        class_weights: ``None`` or ``"balanced"`` (inverse class frequency of the training fold).
        dropout: Dropout before the classifier.
        drop_path: Stochastic depth rate.
        augment: Train augmentation policy.
        hflip: Whether augmentation may flip images horizontally (off for digits or text).
        feature_views: Augmented views per image whose backbone features are cached for a
            ``head`` or ``probe_full`` fit when ``augment`` is not ``none``. The default, 2,
            scored as well as 1 and 4 in bench/transfer.py (CIFAR-10 subset, light) at half
            the build time of 4.
        grad_clip: Clip the global gradient norm to this value; ``None`` disables clipping.
        patience: Stop a fold after this many epochs without improvement; ``None`` disables it.
        metric: Validation metric that scores a fold and picks its best epoch (``log_loss`` is
            minimised, the others maximised).
        seed: Seed for weights, batch order and augmentation.

    ``metric`` and ``seed`` are one value for a whole study, so a space file sets them as study
    settings; the study copies them into every trial's config, and the trainer, which knows
    nothing of studies, reads them here like any other field.
        device: ``cuda``, ``cuda:1``, ``mps`` or ``cpu``; ``None`` picks cuda, then mps, then cpu.
        amp: Mixed precision; ``None`` means on for CUDA.
        channels_last: Channels-last memory format; ``None`` means on for CUDA and CPU.
        num_workers: Loader worker processes; ``None`` picks from the device and core count.
        threads: Torch CPU threads; ``None`` keeps what the process has.
        eval_batch_size: Images per evaluation batch; ``None`` means the trainer's default
            (`trainer.loop.EVAL_BATCH_SIZE`). Halved when evaluation runs out of memory.
    """

    backbone: str = "test_resnet"
    pretrained: Pretrained = False
    finetune: Finetune = "full"
    image_size: int = 32
    epochs: int = 8
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    optimizer: Optimizer = "adamw"
    weight_decay: float = 0.01
    probe_l2: float = 0.5
    momentum: float = 0.9
    nesterov: bool = True
    scheduler: Scheduler = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 3
    step_gamma: float = 0.1
    loss: Loss = "ce"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.1
    class_weights: Literal["balanced"] | None = None
    dropout: float = 0.0
    drop_path: float = 0.0
    augment: Augment = "light"
    hflip: bool = True
    feature_views: int = 2
    grad_clip: float | None = None
    patience: int | None = None
    metric: Metric = "f1_macro"
    seed: int = 0
    device: str | None = None
    amp: bool | None = None
    channels_last: bool | None = None
    num_workers: int | None = None
    threads: int | None = None
    eval_batch_size: int | None = None

    def __post_init__(self) -> None:
        # The same checks a space file's values get (`trainer.checks`), for direct users.
        problem = checks.config_problem(self)
        if problem:
            raise ConfigError(f"{problem}.")

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a copy with ``changes`` applied (validated like the original)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (stable key order)."""
        return dataclasses.asdict(self)


def field_names() -> tuple[str, ...]:
    """Names of every `TrainConfig` field, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def weights_for(pretrained: Pretrained, backbone: str) -> bool | str:
    """The pretrained weights of ``backbone``: its entry when ``pretrained`` is a dict.

    Raises:
        ConfigError: ``pretrained`` is a dict without an entry for ``backbone``.
    """
    if not isinstance(pretrained, dict):
        return pretrained
    if backbone not in pretrained:
        raise ConfigError(
            f"pretrained names no weights for backbone {backbone!r} (only for "
            f"{', '.join(map(repr, pretrained))}); add {backbone!r}: '/path/file.safetensors' "
            "to it, or use another backbone."
        )
    return pretrained[backbone]
