#!/usr/bin/env bash
# Set up everything from scratch (idempotent, cached) and run lint + the test suite.
#   bash scripts/test.sh            # all tests
#   bash scripts/test.sh -k chat    # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
ruff check .
python -m pytest "$@"
