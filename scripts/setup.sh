#!/usr/bin/env bash
# Create (or update) the environment in .venv/ at the repository root: the project, installed in
# editable mode with its test tools, every dependency pinned by requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: $PYTHON is $("$PYTHON" --version 2>&1); inventory-monitoring needs Python >= 3.10" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
echo "setup: installing the project and its pinned dependencies (first run: a few minutes)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c requirements.lock -e ".[dev]"
.venv/bin/python -m pip check
echo "setup: ready (.venv/bin/invmon --help)"
