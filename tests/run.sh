#!/usr/bin/env bash
# The test command (the README's second command; .ci/run calls it too):
#
#   bash tests/run.sh                  # install what the tests need, then run every test
#   bash tests/run.sh -k serve -x      # arguments go to pytest
#   VENV=/path/to/venv bash tests/run.sh   # another venv (relative paths from the repository root)
#
# 1. installs requirements-dev.txt into the virtual environment $VENV (default: .venv in the repository,
#    which the README's first command creates);
# 2. installs Debian's chromium when it is missing (the chat page's browser test drives it): with apt-get
#    as root, or with sudo when sudo needs no password; otherwise it says what to install and goes on
#    (only tests/test_serve_browser.py fails without it);
# 3. runs `python -m pytest -q tests "$@"` from the repository root and exits with pytest's status.
#
# The tests also read the team data in ../shared/data: clone this repository beside shared/.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  echo "tests/run.sh: no virtual environment at $VENV: create it with the README's first command" \
       "(python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e .), or set VENV=DIR" >&2
  exit 2
fi

"$PY" -m pip install -q -r requirements-dev.txt

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    SUDO="no"
  fi
  if [ "$SUDO" != no ] && command -v apt-get >/dev/null 2>&1 \
     && $SUDO apt-get update -qq \
     && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
    echo "tests/run.sh: installed chromium (for the browser test)"
  else
    echo "tests/run.sh: chromium is missing and could not be installed here (that needs apt-get as root or" \
         "sudo without a password): install Debian's chromium package (apt-get install chromium) or put a" \
         "chromium on PATH; without it tests/test_serve_browser.py fails, the other tests run" >&2
  fi
fi

exec "$PY" -m pytest -q tests "$@"
