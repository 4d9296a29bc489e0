"""Test-wide settings: offline, CPU, deterministic, small."""

from __future__ import annotations

import os
import signal
from pathlib import Path

# Must be set before huggingface_hub or albumentations are imported (see library-facts.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import pytest
import torch

# Child processes (`python -m search.cli ...`) must import this checkout's packages, not those of
# another checkout installed in editable mode into the same environment.
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

# Two cores for the tests in all: split between pytest-xdist's workers (tools/test.sh runs two).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))

# A shell that starts the tests in the background (`bash .ci/run &`) ignores SIGINT, and child
# processes would inherit that: the Ctrl-C tests could then not interrupt them. A Python handler
# here is reset to the default at exec, so every child hpo process gets Ctrl-C as a user does.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Fixtures wider than one test run before `_isolated_cwd`, in the directory pytest started
    in (often the checkout): their image and weights caches go to a temporary folder instead of
    its studies/cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPO_CACHE_DIR", str(tmp_path_factory.mktemp("session-cache")))
        yield


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own folder so that studies/, mlflow.db and caches never leak."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HPO_CACHE_DIR", raising=False)
