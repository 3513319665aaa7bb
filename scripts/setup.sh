#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with vitrobust and its dev extras, and Debian's
# Fashion-MNIST and chromium packages where apt exists. Safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

py=python3.11
command -v "$py" >/dev/null 2>&1 || py=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi

# Reinstall only when pyproject.toml changed or the package does not import.
stamp=.venv/.vitrobust-setup
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import vitrobust" >/dev/null 2>&1; then
  echo "setup: installing vitrobust[dev,deploy] into .venv (torch==2.14.1, torchvision==0.29.1, timm, ...)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,deploy]' 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
fi

# The embedded default data set.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
    echo "setup: installing Debian's dataset-fashion-mnist"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist; } \
      >/dev/null 2>&1 || echo "setup: warning: apt-get could not install dataset-fashion-mnist; see README (Data)"
  else
    echo "setup: no apt-get here; put the Fashion-MNIST IDX files in ~/.cache/vitrobust/fashion-mnist (see README)"
  fi
fi

# Headless Chromium for the report's browser test (tests/test_report_browser.py).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
    echo "setup: installing Debian's chromium (headless browser for the report test)"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } \
      >/dev/null 2>&1 || echo "setup: warning: apt-get could not install chromium; tests/test_report_browser.py needs it"
  else
    echo "setup: no apt-get here; install Chromium (or Chrome) for tests/test_report_browser.py"
  fi
fi
