#!/usr/bin/env bash
# Create .venv (or $HPO_VENV) and install hpo into it.  Usage: bash tools/setup.sh [--test]
# Only Python 3.11 and pip are assumed. torch and torchvision are installed first and pinned
# so that pip takes the wheels this machine already has instead of resolving a newer build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${HPO_VENV:-.venv}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
"$venv/bin/python" -m pip install --quiet -e ".${extra}"
echo "hpo installed in $venv"
