#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: generated code fresh, lint, types, tests.
# Run from a venv with `pip install -e '.[test,distributed]'` done (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== generated protobuf code is fresh"
python ops/gen_protos.py --check

echo "== ruff"
ruff check .
ruff format --check .

echo "== mypy --strict"
mypy

echo "== pytest"
pytest -q -p no:cacheprovider "$@"
