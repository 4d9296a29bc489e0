"""Device choices: bf16 only where the GPU runs it natively; core counts honour affinity."""

from __future__ import annotations

import os

import pytest
import torch

from trainer.cache import worker_count
from trainer.config import TrainConfig
from trainer.cpus import cpu_count
from trainer.device import resolve_runtime
from trainer.inference import ensemble


def _pretend_cuda(monkeypatch: pytest.MonkeyPatch, *, native_bf16: bool) -> None:
    """A CUDA machine whose bf16 is native (Ampere and later) or only emulated (T4, V100)."""

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    # resolve_runtime switches cuDNN autotuning on for CUDA; undo it after the test.
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)


def test_emulated_bf16_gets_fp16_with_a_grad_scaler(monkeypatch):
    _pretend_cuda(monkeypatch, native_bf16=False)
    runtime = resolve_runtime(TrainConfig(device="cuda", num_workers=0))
    assert runtime.device.type == "cuda"
    assert runtime.amp_dtype == torch.float16


def test_native_bf16_is_used_where_the_gpu_has_it(monkeypatch):
    _pretend_cuda(monkeypatch, native_bf16=True)
    runtime = resolve_runtime(TrainConfig(device="cuda", num_workers=0))
    assert runtime.amp_dtype == torch.bfloat16


def test_no_mixed_precision_on_the_cpu():
    assert resolve_runtime(TrainConfig(device="cpu", num_workers=0)).amp_dtype is None


def test_every_core_count_honours_the_affinity_mask(monkeypatch):
    # A scheduler (taskset, Slurm, a container) lets this process use 3 of the machine's 64 cores.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert cpu_count() == 3
    assert worker_count(None, tasks=1000) == 3
    assert worker_count(-2, tasks=1000) == 2
    assert ensemble._decode_threads() == 3


def test_channels_last_is_on_for_the_cpu_unless_the_config_says_otherwise():
    assert resolve_runtime(TrainConfig(device="cpu", num_workers=0)).channels_last
    off = TrainConfig(device="cpu", num_workers=0, channels_last=False)
    assert not resolve_runtime(off).channels_last
