# Sourced by the hack/bench-*.sh scripts: seconds as bc computes them.
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
