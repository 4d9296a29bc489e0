#!/usr/bin/env bash
# Set up the test environment and run the whole suite: lint, format check, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh --test
venv=${HPO_VENV:-.venv}
# Set before Python starts: huggingface_hub reads it at import (see docs/testing in README).
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
# Two test processes (pytest-xdist): most tests wait on child processes, servers and storage,
# so two overlap well on two cores (the suite took 749 s instead of 1,178 s).
"$venv/bin/python" -m pytest -q -n "${HPO_TEST_PROCESSES:-2}" "$@"
