#!/usr/bin/env bash
# Installs (if needed) and starts the real servers the enabled backends' tests need, on
# 127.0.0.1, and stops them again.
#
#   scripts/test-services.sh start STATE_DIR   # starts servers, writes STATE_DIR/env (exports)
#   scripts/test-services.sh stop  STATE_DIR   # stops what `start` started (idempotent)
#
# Slow downloads and builds are cached under ${XDG_CACHE_HOME:-$HOME/.cache}/tenure-test so
# repeated runs are fast, while a fresh machine still gets everything from scratch.
# Every server gets its own free port; nothing listens beyond loopback.
#
# The core (memory and file stores) needs no server. Each backend adds a `start_<name>`
# function below and a line in `start`.
set -euo pipefail

cmd=${1:?usage: $0 start|stop STATE_DIR}
state=${2:?usage: $0 start|stop STATE_DIR}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/tenure-test
mkdir -p "$state" "$cache"

log() { echo "test-services: $*" >&2; }

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Records a started process so `stop` can end it.
started() { echo "$1" >>"$state/pids"; }

export_var() { echo "export $1=$(printf '%q' "$2")" >>"$state/env"; }

case "$cmd" in
  start)
    : >"$state/env"
    : >"$state/pids"
    export_var TENURE_TEST_STATE "$state"
    log "no backend needs a server yet (memory and file stores are in-process)"
    ;;
  stop)
    if [ -f "$state/pids" ]; then
      while read -r pid; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
      done <"$state/pids"
      rm -f "$state/pids"
    fi
    ;;
  *)
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 2
    ;;
esac
