# Sourced by the hack/bench-*.sh scripts: seconds as bc computes them.
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
# start_registry DIR: a docker-registry of its own on loopback, its data,
# log and pid in DIR; prints its host:port. stop_registry DIR stops it.
start_registry() {
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$1"
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$1/data" "$port" > "$1/config.yml"
  docker-registry serve "$1/config.yml" >"$1/log" 2>&1 &
  echo $! > "$1/pid"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
  echo "127.0.0.1:$port"
}
stop_registry() { if [ -f "$1/pid" ]; then kill "$(cat "$1/pid")" 2>/dev/null || true; fi; }
