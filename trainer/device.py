"""Device, precision and thread choices, resolved once per fold from a `TrainConfig`."""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass

import numpy as np
import torch

from trainer.config import TrainConfig
from trainer.cpus import cpu_count
from trainer.errors import ConfigError

EVAL_BATCH_SIZE = 256
"""Images per evaluation batch on a GPU (no gradients are kept, so it can be larger than a
training batch); halved when evaluation runs out of memory."""
_CPU_EVAL_PIXELS = 1 << 17
"""On a CPU, input pixels per evaluation batch. Large batches run slower there: their
activations spill out of the caches. bench/eval_batch.py, one thread: 1.1x (resnet10t at 32 px,
batch 128) to 2.1x (tf_efficientnet_lite0 at 96 px, batch 8) faster than batch 256."""


def eval_batch_size(image_size: int, device: torch.device, requested: int | None = None) -> int:
    """Images per evaluation batch: ``requested``, else `EVAL_BATCH_SIZE` on an accelerator,
    else on a CPU the power of two (8 to 256) nearest below `_CPU_EVAL_PIXELS` pixels."""
    if requested:
        return requested
    if device.type != "cpu":
        return EVAL_BATCH_SIZE
    fits = max(1, _CPU_EVAL_PIXELS // (image_size * image_size))
    return max(8, min(EVAL_BATCH_SIZE, 1 << (fits.bit_length() - 1)))


@dataclass(frozen=True)
class Runtime:
    """The concrete choices behind a config's ``None`` fields."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    num_workers: int

    @property
    def memory_format(self) -> torch.memory_format:
        """Memory format for model weights and input batches."""
        return torch.channels_last if self.channels_last else torch.contiguous_format


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, else cuda, then mps, then cpu.

    Raises:
        ConfigError: If ``requested`` names a device this machine does not have.
    """
    if requested is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ConfigError(
            f"device={requested!r} is not a device name; use cuda, mps or cpu."
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={requested!r} was asked for but CUDA is not available; use cpu.")
    return device


def resolve_runtime(config: TrainConfig) -> Runtime:
    """Fill in the device, mixed precision, memory format and loader workers of ``config``."""
    device = pick_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    on_cuda = device.type == "cuda"
    amp = on_cuda if config.amp is None else config.amp and on_cuda
    amp_dtype = cuda_autocast_dtype() if amp else None
    # oneDNN (CPU) and cuDNN run convolutions faster on channels-last tensors. On 2 CPU cores
    # a training step at 32 px, batch 32 and 64, took this share of its NCHW time: test_resnet
    # 0.75-0.79, test_convnext 0.88-1.07, test_vit (no convolutions but its stem) 1.00-1.04.
    fast_layout = device.type in ("cuda", "cpu")
    channels_last = fast_layout if config.channels_last is None else config.channels_last
    if on_cuda:
        # Shapes are fixed within a fold, so cuDNN's autotuning pays for itself after a step.
        torch.backends.cudnn.benchmark = True
    return Runtime(device, amp_dtype, channels_last, _workers(config, on_cuda))


def cuda_autocast_dtype() -> torch.dtype:
    """bf16 where the GPU computes it natively (Ampere and later), else fp16.

    `torch.cuda.is_bf16_supported()` alone is also True on T4 and V100, which only emulate bf16
    (slowly); fp16 with a `GradScaler` is their fast path.
    """
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


def _workers(config: TrainConfig, on_cuda: bool) -> int:
    if config.num_workers is not None:
        return config.num_workers
    if on_cuda:
        return max(1, min(8, cpu_count() - 1))
    # On a CPU-only machine the model needs every core; augmenting small cached arrays in the
    # training process costs less than a worker process competing for the same cores.
    return 0


def release_memory() -> None:
    """Give back what a finished model held, so memory does not grow across trials."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
