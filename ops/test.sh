#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: generated code fresh, lint, types, real services,
# tests. Run from a venv with `pip install -e '.[test,distributed]'` done (see README).
#
# The real-backend suites (Kafka event log, Cassandra store, distributed end to end) need a Kafka
# broker and a Cassandra node: this script starts both with ops/services.sh (fetched from Maven
# Central on first use) and stops them at the end. If both already run (`ops/services.sh status`),
# it uses them and leaves them running. Those suites FAIL, never skip, when a service is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Start Kafka and Cassandra in the background while the static checks run (~10-20 s).
services_pid=""
if ! ops/services.sh status >/dev/null 2>&1; then
  mkdir -p .run
  ops/services.sh start >.run/services-start.log 2>&1 &
  services_pid=$!
  # let a start still in progress finish first, so no JVM outlives the run
  trap 'wait "$services_pid" 2>/dev/null; echo "== stopping services"; ops/services.sh stop >/dev/null 2>&1 || true' EXIT
fi

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

echo "== real services (Kafka + Cassandra)"
if [[ -n $services_pid ]]; then
  if ! wait "$services_pid"; then
    cat .run/services-start.log >&2
    echo "ops/services.sh start failed (log above)" >&2
    exit 1
  fi
  cat .run/services-start.log
else
  echo "services: already running; using them and leaving them running"
fi
export LABELWEAVE_KAFKA=${LABELWEAVE_KAFKA:-127.0.0.1:9092}
export LABELWEAVE_CASSANDRA=${LABELWEAVE_CASSANDRA:-127.0.0.1:9042}

# The distributed benchmark as a smoke test (~15 s): Kafka event log and Kafka -> Cassandra rebuild
# measured side by side with raw kafka-python; exits non-zero only if something breaks (a failed
# append, a checksum mismatch). Goals and results: docs/benchmarks.md.
echo "== bench smoke (python -m bench.distributed --quick)"
python -m bench.distributed --quick

# pytest last, so its summary is the run's closing line
echo "== pytest"
pytest -q -p no:cacheprovider "$@"
