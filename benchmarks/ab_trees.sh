#!/usr/bin/env bash
# A/B of two source trees through `cdp up` + `cdp bench`, alternating, so both see the
# same machine (a shared 2-core box is noisy: compare medians of several rounds).
#
#   benchmarks/ab_trees.sh BEFORE_TREE AFTER_TREE [ROUNDS] [cdp bench options...]
#   git worktree add /tmp/before 692bbf3
#   benchmarks/ab_trees.sh /tmp/before . 3 --only drain --drain 30000
#
# Each tree runs with its own code (PYTHONPATH) and this checkout's virtualenv (.venv);
# every line of `cdp bench` is printed prefixed with "before:" / "after:".
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
before="$(cd "$1" && pwd)"
after="$(cd "$2" && pwd)"
rounds="${3:-3}"
shift $(( $# < 3 ? $# : 3 ))
bench_args=("$@")
[ ${#bench_args[@]} -gt 0 ] || bench_args=(--only ingest --only batch --only drain --duration 8 --drain 30000)

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run() {  # name tree
  local name=$1 tree=$2 port rport data pid
  port=$(free_port); rport=$(free_port); data=$(mktemp -d)
  (cd "$tree" && CDP_ADMIN_TOKEN=adm CDP_WRITE_KEYS=wk1 PYTHONPATH="$tree" \
    exec "$python" -m cdp up --port "$port" --redis-port "$rport" --data-dir "$data" \
    > "$data/up.log" 2>&1) &
  pid=$!
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.5; done
  (cd "$tree" && CDP_REDIS_URL="redis://127.0.0.1:$rport/0" PYTHONPATH="$tree" \
    "$python" -m cdp bench --url "http://127.0.0.1:$port" --write-key wk1 --admin-token adm \
    "${bench_args[@]}" 2>&1 | sed "s/^/$name: /")
  kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  rm -rf "$data"
}

for _ in $(seq "$rounds"); do
  run before "$before"
  run after "$after"
done
