#!/usr/bin/env bash
# Install everything a fresh machine lacks to build, run and test Strata.
# Safe to run twice: each step checks first and does nothing when it is done.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
step() { printf '\n== %s\n' "$*"; }

step "Debian packages (PostgreSQL, Redis)"
missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
  sudo_cmd=""; [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's postinst starts a system cluster and redis on the default ports; the stack
# uses its own, so those are left alone.
echo "ok: postgres $(ls -d /usr/lib/postgresql/*/ | head -1), $(redis-server --version | cut -d' ' -f3)"

step "uv (from PyPI)"
if ! command -v uv >/dev/null; then
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
fi
uv --version

step "Python dependencies (uv.lock, machine's Python 3.11)"
UV_PYTHON_DOWNLOADS=never uv sync --frozen --python 3.11

step "Kafka broker jars (Maven Central)"
KAFKA_DIR=deploy/local/kafka
if [[ ! -f $KAFKA_DIR/target/libs/.complete ]]; then
  mvn -q -B -f $KAFKA_DIR/pom.xml dependency:copy-dependencies -DoutputDirectory=target/libs
  touch $KAFKA_DIR/target/libs/.complete
fi
echo "ok: $(ls $KAFKA_DIR/target/libs/*.jar | wc -l) jars"
