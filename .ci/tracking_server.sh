#!/usr/bin/env bash
# An MLflow tracking server for runs spread over machines: PostgreSQL as the backend store (in DIR/pg, on a Unix
# socket only) and proxied artifacts (`--artifacts-destination DIR/artifacts --serve-artifacts`: clients upload
# and download through the server, never to its paths). Used by `make tracking-server`, the tests and .ci/run.
#
#   .ci/tracking_server.sh start DIR [PORT] [HOST]   start both (PORT 5005, HOST 127.0.0.1); prints the URI
#   .ci/tracking_server.sh stop DIR                  stop both (the data stay in DIR)
#
# HOST 0.0.0.0 makes it reachable from other machines (no authentication: keep it on a private network).
# As root, PostgreSQL runs as the user `postgres`: DIR (and the folders above it) must be traversable by it.
# Environment: MLFLOW (the mlflow command; default: the one beside `python3`), PYTHON (with psycopg2).
set -euo pipefail
cmd=${1:-}; dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then echo "usage: $0 start|stop DIR [PORT] [HOST]" >&2; exit 2; fi
dir=$(realpath -m "$dir"); port=${3:-5005}; host=${4:-127.0.0.1}
PYTHON=${PYTHON:-python3}; MLFLOW=${MLFLOW:-$(dirname "$(command -v "$PYTHON")")/mlflow}
pg=$dir/pg
for d in /usr/local/bin /usr/lib/postgresql/*/bin; do [[ -x $d/pg_ctl ]] && PGBIN=$d && break; done
if [[ -z "${PGBIN:-}" ]]; then
  echo "PostgreSQL not found (pg_ctl): install it, e.g. apt-get install postgresql" >&2; exit 2; fi
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop() {
  if [[ -f $dir/mlflow.pid ]]; then
    pid=$(cat "$dir/mlflow.pid")
    kill -TERM -- "-$pid" 2>/dev/null || true   # the server's process group: it and its workers
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true; rm -f "$dir/mlflow.pid"
  fi
  if [[ -f $pg/postmaster.pid ]]; then as_pg "$PGBIN/pg_ctl" -D "$pg" -m fast -w stop >/dev/null; fi
}

start() {
  mkdir -p "$dir/artifacts"; chmod 711 "$dir"
  if [[ ! -f $pg/PG_VERSION ]]; then
    mkdir -p "$pg"; [[ $(id -u) == 0 ]] && chown postgres "$pg"
    as_pg "$PGBIN/initdb" -D "$pg" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log"
  fi
  as_pg "$PGBIN/pg_ctl" -D "$pg" -l "$pg/server.log" -w -o "-c listen_addresses='' -k $pg" start >/dev/null
  "$PYTHON" - "$pg" <<'EOF'
import sys, psycopg2
con = psycopg2.connect(host=sys.argv[1], user='postgres', dbname='postgres'); con.autocommit = True
cur = con.cursor(); cur.execute("SELECT 1 FROM pg_database WHERE datname = 'mlflow'")
if not cur.fetchone(): cur.execute('CREATE DATABASE mlflow')
EOF
  # its own process group: `stop` (and a test's clean-up) end the server and its workers together; no job
  # runner (MLflow 3's background jobs, unused here: six idle processes)
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
  setsid "$MLFLOW" server --backend-store-uri "postgresql+psycopg2://postgres@/mlflow?host=$pg" \
    --artifacts-destination "$dir/artifacts" --serve-artifacts --host "$host" --port "$port" --workers 1 \
    >"$dir/mlflow.log" 2>&1 &
  echo $! >"$dir/mlflow.pid"
  for _ in $(seq 240); do
    if "$PYTHON" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null
    then echo "http://$( [[ $host == 0.0.0.0 ]] && hostname -f || echo "$host" ):$port"; return; fi
    if ! kill -0 "$(cat "$dir/mlflow.pid")" 2>/dev/null; then
      echo "mlflow server exited; its log, $dir/mlflow.log:" >&2; tail -20 "$dir/mlflow.log" >&2; stop; exit 1; fi
    sleep 0.5
  done
  echo "mlflow server not answering on port $port after 120 s (log: $dir/mlflow.log)" >&2; stop; exit 1
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR [PORT] [HOST]" >&2; exit 2 ;;
esac
