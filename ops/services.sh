#!/usr/bin/env bash
# Start/stop the local Kafka broker and Cassandra node together (see ops/kafka.sh, ops/cassandra.sh).
#
#   ops/services.sh start    start both in parallel, wait until both answer clients
#   ops/services.sh stop     stop both
#   ops/services.sh status   show both (exit 0 only if both run)
#
# Same environment variables as the two scripts (LABELWEAVE_CACHE, LABELWEAVE_RUN, ...).
set -euo pipefail

OPS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN=${LABELWEAVE_RUN:-$(dirname "$OPS")/.run}

start() {
  local t0=$SECONDS rc=0 kpid cpid
  # start includes the one-time Maven fetch; run both start+wait pipelines in parallel.
  ("$OPS/kafka.sh" start && "$OPS/kafka.sh" wait) &
  kpid=$!
  ("$OPS/cassandra.sh" start && "$OPS/cassandra.sh" wait) &
  cpid=$!
  wait "$kpid" || rc=1
  wait "$cpid" || rc=1
  if ((rc != 0)); then
    echo "services: start failed; stopping whatever did start" >&2
    stop
    return 1
  fi
  echo "services: Kafka 127.0.0.1:9092 and Cassandra 127.0.0.1:9042 ready after $((SECONDS - t0))s"
  echo "services: logs in $RUN/kafka/logs (server.log) and $RUN/cassandra/logs (system.log)"
}

stop() {
  local rc=0 kpid cpid
  "$OPS/kafka.sh" stop &
  kpid=$!
  "$OPS/cassandra.sh" stop &
  cpid=$!
  wait "$kpid" || rc=1
  wait "$cpid" || rc=1
  return $rc
}

status() {
  local rc=0
  "$OPS/kafka.sh" status || rc=$?
  "$OPS/cassandra.sh" status || rc=$?
  return $rc
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
restart)
  stop
  start
  ;;
*)
  echo "usage: $0 start|stop|status|restart" >&2
  exit 2
  ;;
esac
