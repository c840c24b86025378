# Shared by ops/kafka.sh and ops/cassandra.sh (sourced, not run): logging, the PID check, the Maven
# fetch into the jar cache, stop by PID, and the command dispatch. Each script sets, before sourcing:
#   NAME         short name for messages ("kafka")
#   LABEL        product name for messages ("Kafka")
#   REPO VERSION HOME_DIR RUN PIDFILE HOST POM
#   MAIN_CLASS_PATTERN   what the JVM's command line must contain (a reused PID is not ours)
#   ARTIFACT     groupId:artifactId fetched by the pom ("org.apache.kafka:kafka_2.13")
#   VERSION_PROPERTY     the pom's version property ("kafka.version")
#   MAIN_JAR     the jar that must exist after the fetch ("kafka_2.13-$VERSION.jar")
# and defines start, wait_ready and status_line (the one-line "running" description).
# shellcheck shell=bash

log() { echo "$NAME: $*" >&2; }
die() {
  log "$*"
  exit 1
}

python_bin() {
  if [[ -n ${LABELWEAVE_PYTHON:-} ]]; then echo "$LABELWEAVE_PYTHON"; elif [[ -x $REPO/.venv/bin/python ]]; then echo "$REPO/.venv/bin/python"; else command -v python3; fi
}

# PID of the running JVM, or nothing. A stale PID file (or a reused PID) is ignored.
running_pid() {
  [[ -f $PIDFILE ]] || return 0
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$MAIN_CLASS_PATTERN"; then
    echo "$pid"
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# The cache is keyed by version and by the pom's hash: editing the pom refetches.
fetch() {
  local pom_hash
  pom_hash=$(sha256sum "$POM" | cut -d' ' -f1)
  if [[ -f $HOME_DIR/.complete && $(cat "$HOME_DIR/.complete") == "$pom_hash" ]]; then return 0; fi
  command -v mvn >/dev/null || die "mvn (Maven) is needed to fetch $LABEL $VERSION"
  log "fetching $ARTIFACT:$VERSION and its runtime dependencies into $HOME_DIR"
  local tmp=$HOME_DIR.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! mvn -B -q -f "$POM" dependency:copy-dependencies \
    -D"$VERSION_PROPERTY"="$VERSION" -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
    tail -n 30 "$tmp/mvn.log" >&2
    rm -rf "$tmp"
    die "Maven fetch of $LABEL $VERSION failed"
  fi
  ls "$tmp/libs/$MAIN_JAR" >/dev/null || die "$MAIN_JAR missing after fetch"
  rm -rf "$HOME_DIR"
  mv "$tmp" "$HOME_DIR"
  echo "$pom_hash" >"$HOME_DIR/.complete"
}

# SIGTERM, then SIGKILL after 20 s; waits for the process to exit.
stop() {
  local pid
  pid=$(running_pid)
  if [[ -z $pid ]]; then
    rm -f "$PIDFILE"
    log "not running"
    return 0
  fi
  log "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still running after 20s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  log "stopped"
}

status() {
  local pid
  pid=$(running_pid)
  if [[ -n $pid ]]; then
    echo "$NAME: $(status_line "$pid")"
  else
    echo "$NAME: stopped"
    return 3
  fi
}

dispatch() {
  case ${1:-} in
  start) start ;;
  wait) wait_ready ;;
  stop) stop ;;
  status) status ;;
  restart)
    stop
    start
    ;;
  reset)
    stop
    rm -rf "$RUN"
    log "removed $RUN"
    ;;
  fetch) fetch ;;
  *)
    echo "usage: $0 start|stop|status|wait|restart|reset|fetch" >&2
    exit 2
    ;;
  esac
}
