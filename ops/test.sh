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

# The benchmark as a smoke test: it must run end to end (server process, load, SIGTERM, rebuild
# MATCH). Its numbers are printed, never asserted: targets live in docs/benchmarks.md.
echo "== bench smoke (python -m bench.embedded --quick)"
python -m bench.embedded --quick --sizes 2000 --seconds 2

# pytest last, so its summary is the run's closing line
echo "== pytest"
pytest -q -p no:cacheprovider "$@"
