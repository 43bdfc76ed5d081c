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

# Installs Debian packages that are missing (needs root, as on CI).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$cache/apt.log" 2>&1; then
    apt-get update >>"$cache/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$cache/apt.log" 2>&1
  fi
}

# A private apt configuration for bullseye (Consul, Go 1.15) and bookworm sources, leaving the
# system's sources untouched. Sets $APT_OPTS.
private_apt() {
  local c=$cache/apt
  mkdir -p "$c/lists/partial"
  local uri
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  uri=${uri:-http://deb.debian.org/debian}
  {
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bullseye main"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bookworm main"
  } >"$c/sources.list"
  APT_OPTS=(-o "Dir::Etc::sourcelist=$c/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$c/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
  if [ ! -f "$c/lists/.updated" ]; then
    apt-get "${APT_OPTS[@]}" update >"$c/update.log" 2>&1
    touch "$c/lists/.updated"
  fi
}

# kube-apiserver 1.20.2 built from Debian bookworm's kubernetes source package with Go 1.15
# (see shared/services.md). Cached: built once per machine, 6 to 12 minutes on 2 cores.
# Prints the binary's path.
ensure_kube_apiserver() {
  local k=$cache/kubernetes
  local bin=$k/bin/kube-apiserver
  if [ -x "$bin" ]; then echo "$bin"; return 0; fi
  apt_install rsync jq make dpkg-dev etcd-server openssl
  private_apt
  mkdir -p "$k/dl" "$k/bin"
  (
    set -e
    cd "$k/dl"
    if [ ! -x "$k/go115/usr/lib/go-1.15/bin/go" ]; then
      apt-get "${APT_OPTS[@]}" download golang-1.15-go golang-1.15-src >&2
      for f in golang-1.15-*.deb; do dpkg-deb -x "$f" "$k/go115"; done
    fi
    if [ ! -d "$k/dl/kubernetes-1.20.2" ]; then
      apt-get "${APT_OPTS[@]}" source --download-only kubernetes=1.20.5+really1.20.2-1.1+deb12u1 >&2
      tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz
    fi
    export GOROOT=$k/go115/usr/lib/go-1.15
    export PATH=$GOROOT/bin:$PATH GOPATH=$k/gopath GOPROXY=off GOFLAGS= CGO_ENABLED=0
    mkdir -p "$GOPATH/src/k8s.io"
    ln -sfn "$k/dl/kubernetes-1.20.2" "$GOPATH/src/k8s.io/kubernetes"
    cd "$GOPATH/src/k8s.io/kubernetes"
    log "building kube-apiserver 1.20.2 with $(go version) (cached afterwards; 6-12 minutes)"
    KUBE_BUILD_PLATFORMS=linux/amd64 make WHAT=cmd/kube-apiserver >"$k/build.log" 2>&1
    cp _output/bin/kube-apiserver "$bin.tmp" && mv "$bin.tmp" "$bin"
    # client-go's own example elector, for the interoperability test.
    GO111MODULE=off go build -o "$k/bin/client-go-leader-election" ./vendor/k8s.io/client-go/examples/leader-election >>"$k/build.log" 2>&1
  ) >&2
  echo "$bin"
}

# Waits until redis-cli gets PONG from 127.0.0.1:$1 (extra redis-cli arguments may follow).
wait_redis() {
  local port=$1
  shift
  for _ in $(seq 1 100); do
    [ "$(redis-cli -h 127.0.0.1 -p "$port" "$@" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  log "redis on port $port did not answer PING"
  return 1
}

# Two Redis servers without persistence: an open one (TENURE_REDIS_URL) and one that requires
# credentials (TENURE_REDIS_AUTH_URL: an ACL user allowed everything; TENURE_REDIS_LIMITED_URL:
# a user allowed nothing but PING; TENURE_REDIS_AUTH_ADDR to build wrong credentials). The
# tests start private servers of their own with TENURE_REDIS_SERVER for the crash test.
start_redis() {
  apt_install redis-server redis-tools
  local dir=$state/redis
  mkdir -p "$dir"
  local port auth_port
  port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --logfile "$dir/open.log" --pidfile "$dir/open.pid" --dir "$dir"
  wait_redis "$port"
  started "$(cat "$dir/open.pid")"
  auth_port=$(free_port)
  cat >"$dir/auth.conf" <<CONF
port $auth_port
bind 127.0.0.1
save ""
appendonly no
daemonize yes
logfile $dir/auth.log
pidfile $dir/auth.pid
dir $dir
requirepass default-secret
user tenure on >tenure-secret ~* &* +@all
user limited on >limited-secret ~* &* -@all +ping +hello +auth
CONF
  redis-server "$dir/auth.conf"
  wait_redis "$auth_port" --no-auth-warning -a default-secret
  started "$(cat "$dir/auth.pid")"
  export_var TENURE_REDIS_URL "redis://127.0.0.1:$port/"
  export_var TENURE_REDIS_AUTH_URL "redis://tenure:tenure-secret@127.0.0.1:$auth_port/"
  export_var TENURE_REDIS_LIMITED_URL "redis://limited:limited-secret@127.0.0.1:$auth_port/"
  export_var TENURE_REDIS_AUTH_ADDR "127.0.0.1:$auth_port"
  export_var TENURE_REDIS_SERVER "$(command -v redis-server)"
  log "redis on 127.0.0.1:$port, redis with ACL users on 127.0.0.1:$auth_port"
}

case "$cmd" in
  start)
    : >"$state/env"
    : >"$state/pids"
    export_var TENURE_TEST_STATE "$state"
    start_redis
    ;;
  build-kube)
    ensure_kube_apiserver
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
