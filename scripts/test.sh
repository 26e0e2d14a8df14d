#!/usr/bin/env bash
# Set up .venv/ and run every check CI runs: ruff (lint and format) and pytest.
# Tests that need the real ABID sample run when ABID_SAMPLE_DIR names it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# A full disk fails tests in confusing ways (a model that cannot be saved, a
# fixture error): say up front how much room there is.
df -h . "${TMPDIR:-/tmp}" | sed 's/^/disk: /'
# The Label Studio round trip needs its own environment (about 160 packages, minutes to install):
# make it in the background while the other tests run; the test waits for it (a file lock).
.venv/bin/python -c 'import sys; sys.path.insert(0, "tests"); from support.labelstudio import label_studio_env; label_studio_env()' \
  > .venv-labelstudio.log 2>&1 &
.venv/bin/python -m pytest "$@"
