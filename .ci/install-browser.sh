#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the browser test (tests/test_browser.py).
# Idempotent: does nothing when both binaries are already there.
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi

# apt-get needs root; use sudo when it is available and we are not root already.
SUDO=""
if [[ "$(id -u)" != "0" ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser: need root (or sudo) to apt-get install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation
/usr/bin/chromium --version
/usr/bin/chromedriver --version
