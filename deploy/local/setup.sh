#!/usr/bin/env bash
# Install everything a fresh machine lacks to build, run and test Strata.
# Safe to run twice: each step checks first and does nothing when it is done.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
step() { printf '\n== %s\n' "$*"; }

step "Debian packages (PostgreSQL, Redis, Java 17, Maven)"
missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])' || missing+=(openjdk-17-jre-headless)  # Kafka 4 needs 17+
command -v mvn >/dev/null || missing+=(maven)
if ((${#missing[@]})); then
  sudo_cmd=""; [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's postinst starts a system cluster and redis on the default ports; the stack
# uses its own private ones (`strata stack`, strata.sdk.stack), so those are left alone.
echo "ok: postgres $(ls -d /usr/lib/postgresql/*/ | head -1), $(redis-server --version | cut -d' ' -f3)," \
  "$(java -version 2>&1 | head -1), $(MAVEN_OPTS="-Djansi.strip=true" mvn -v 2>/dev/null | head -1 | cut -d" " -f1-3)"

step "uv (from PyPI)"
if ! command -v uv >/dev/null; then
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
fi
uv --version

step "Python dependencies (uv.lock, machine's Python 3.11)"
UV_PYTHON_DOWNLOADS=never uv sync --frozen --python 3.11

step "Kafka broker jars (Maven Central)"
KAFKA_DIR=deploy/local/kafka
# The marker holds the pom's hash, so editing the pom re-resolves the jars from scratch.
pom_hash="$(sha256sum $KAFKA_DIR/pom.xml | cut -d' ' -f1)"
if [[ "$(cat $KAFKA_DIR/target/libs/.complete 2>/dev/null)" != "$pom_hash" ]]; then
  rm -rf $KAFKA_DIR/target/libs
  MAVEN_OPTS="-Djansi.strip=true" mvn -q -B -f $KAFKA_DIR/pom.xml dependency:copy-dependencies -DoutputDirectory=target/libs
  echo "$pom_hash" > $KAFKA_DIR/target/libs/.complete
fi
echo "ok: $(ls $KAFKA_DIR/target/libs/*.jar | wc -l) jars"

step "buf (proto lint and breaking-change check, built from the Go module proxy)"
BUF_VERSION=v1.75.0
# Go that builds buf when the machine has none recent enough (Debian's is 1.19): the
# toolchain is itself a module on the Go module proxy, which is how `go` fetches it.
GO_FALLBACK=1.26.7
fetch_go() {
  local dir="$ROOT/bin/go-toolchain" mod="golang.org/toolchain@v0.0.1-go$GO_FALLBACK.linux-$1"
  if [[ ! -x $dir/$mod/bin/go ]]; then
    local proxy="${GOPROXY:-https://proxy.golang.org}"; proxy="${proxy%%,*}"
    mkdir -p "$dir"
    curl -fsSL -o "$dir/go.zip" "$proxy/golang.org/toolchain/@v/v0.0.1-go$GO_FALLBACK.linux-$1.zip"
    python3 -m zipfile -e "$dir/go.zip" "$dir" && rm "$dir/go.zip"
    chmod -R u+x "$dir/$mod/bin" "$dir/$mod/pkg/tool"
  fi
  echo "$dir/$mod/bin/go"
}
if [[ "$(bin/buf --version 2>/dev/null)" != "${BUF_VERSION#v}" ]]; then
  go_bin="$(command -v go || echo /usr/local/go/bin/go)"
  if ! "$go_bin" env GOVERSION 2>/dev/null | grep -qE '^go1\.(2[1-9]|[3-9][0-9])'; then
    case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64 | arm64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac
    go_bin="$(fetch_go "$arch")"
  fi
  # GOTOOLCHAIN=auto lets a Go older than buf's go.mod fetch the newer toolchain itself.
  GOBIN="$ROOT/bin" GOTOOLCHAIN=auto "$go_bin" install "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
fi
echo "ok: buf $(bin/buf --version)"
