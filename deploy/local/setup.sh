#!/usr/bin/env bash
# Install everything a fresh machine lacks to build, run and test Strata.
# Safe to run twice: each step checks first and does nothing when it is done.
# It works from a fresh login shell and changes nothing outside the checkout but
# Debian packages: when no uv is on PATH, uv goes into the checkout's .tools/uv,
# where the Makefile looks for it, so nobody has to edit PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
step() { printf '\n== %s\n' "$*"; }

UV_VERSION=0.13.9 # the uv that wrote uv.lock
UV_TOOL="$ROOT/.tools/uv" # the Makefile's fallback when no uv is on PATH
# uv trusts the machine's certificate store, as pip, curl and git do (a TLS proxy's CA).
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-true}"
BUF_VERSION=v1.75.0
# Go that builds buf when the machine has none recent enough (Debian's is 1.19): the
# toolchain is itself a module on the Go module proxy, which is how `go` fetches it.
GO_FALLBACK=1.26.7

have() { command -v "$1" >/dev/null 2>&1; }
python_is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
python_makes_venvs() { python3 -c 'import ensurepip, venv' 2>/dev/null; }
buf_is_current() { [[ "$(bin/buf --version 2>/dev/null)" == "${BUF_VERSION#v}" ]]; }
go_for_buf() { # a Go that can build buf (1.21+, which fetches a newer toolchain itself), or nothing
  local go_bin
  go_bin="$(command -v go || echo /usr/local/go/bin/go)"
  if "$go_bin" env GOVERSION 2>/dev/null | grep -qE '^go1\.(2[1-9]|[3-9][0-9])'; then
    echo "$go_bin"
  fi
}

step "Tools this script needs"
# Every tool is checked before anything is installed, and all that is missing is named
# at once: a half-finished setup is worse than one that did not start.
packages=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || packages+=(postgresql)
have redis-server || packages+=(redis-server)
java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])' || packages+=(openjdk-17-jre-headless) # Kafka 4 needs 17+
have mvn || packages+=(maven)
have python3.11 || { have python3 && python_is_311 python3; } || packages+=(python3.11)
uv_found="$(command -v uv || true)"
if [[ -z $uv_found && ! -x $UV_TOOL/bin/uv ]] && ! { have python3 && python_makes_venvs; }; then
  packages+=(python3-venv) # uv is installed into a venv of its own
fi

lacking=()
if ((${#packages[@]})); then
  have apt-get || lacking+=("apt-get, to install the Debian packages ${packages[*]} (or install them yourself)")
  [[ $(id -u) -eq 0 ]] || have sudo || lacking+=("sudo, to run apt-get as a user who is not root")
fi
if ! buf_is_current && [[ -z "$(go_for_buf)" ]]; then
  have curl || lacking+=("curl, to fetch Go $GO_FALLBACK from the Go module proxy to build buf")
fi
if ((${#lacking[@]})); then
  echo "setup.sh needs tools this machine does not have:" >&2
  printf '  - %s\n' "${lacking[@]}" >&2
  exit 1
fi
echo "ok: every tool setup.sh uses is here"

step "Debian packages (PostgreSQL, Redis, Java 17, Maven, Python 3.11)"
if ((${#packages[@]})); then
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
# Debian's postinst starts a system cluster and redis on the default ports; the stack
# uses its own private ones (`strata stack`, strata.sdk.stack), so those are left alone.
echo "ok: postgres $(ls -d /usr/lib/postgresql/*/ | head -1), $(redis-server --version | cut -d' ' -f3)," \
  "$(java -version 2>&1 | head -1), $(MAVEN_OPTS="-Djansi.strip=true" mvn -v 2>/dev/null | head -1 | cut -d" " -f1-3)"

step "uv $UV_VERSION (the one on PATH, else one of the checkout's own in .tools/uv)"
if [[ -n $uv_found ]]; then
  uv="$uv_found"
else
  uv="$UV_TOOL/bin/uv"
  # A venv of its own: `pip install --user` is refused where Python is externally
  # managed (PEP 668), and ~/.local/bin is not on a fresh shell's PATH anyway.
  if [[ "$("$uv" --version 2>/dev/null)" != "uv $UV_VERSION"* ]]; then
    rm -rf "$UV_TOOL"
    python3 -m venv "$UV_TOOL"
    "$UV_TOOL/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
fi
echo "ok: $("$uv" --version) at $uv"

step "Python dependencies (uv.lock, machine's Python 3.11)"
UV_PYTHON_DOWNLOADS=never "$uv" sync --frozen --python 3.11

step "Kafka broker jars (Maven Central)"
KAFKA_DIR=deploy/local/kafka
# The marker holds the pom's hash, so editing the pom re-resolves the jars from scratch.
pom_hash="$(sha256sum $KAFKA_DIR/pom.xml | cut -d' ' -f1)"
if [[ "$(cat $KAFKA_DIR/target/libs/.complete 2>/dev/null)" != "$pom_hash" ]]; then
  rm -rf $KAFKA_DIR/target/libs
  MAVEN_OPTS="-Djansi.strip=true" mvn -q -B -f $KAFKA_DIR/pom.xml dependency:copy-dependencies -DoutputDirectory=target/libs
  echo "$pom_hash" >$KAFKA_DIR/target/libs/.complete
fi
echo "ok: $(ls $KAFKA_DIR/target/libs/*.jar | wc -l) jars"

step "buf (proto lint and breaking-change check, built from the Go module proxy)"
fetch_go() {
  local dir="$ROOT/bin/go-toolchain" mod="golang.org/toolchain@v0.0.1-go$GO_FALLBACK.linux-$1"
  if [[ ! -x $dir/$mod/bin/go ]]; then
    local proxy="${GOPROXY:-https://proxy.golang.org}"
    proxy="${proxy%%,*}"
    mkdir -p "$dir"
    curl -fsSL -o "$dir/go.zip" "$proxy/golang.org/toolchain/@v/v0.0.1-go$GO_FALLBACK.linux-$1.zip"
    python3 -m zipfile -e "$dir/go.zip" "$dir" && rm "$dir/go.zip"
    chmod -R u+x "$dir/$mod/bin" "$dir/$mod/pkg/tool"
  fi
  echo "$dir/$mod/bin/go"
}
if ! buf_is_current; then
  go_bin="$(go_for_buf)"
  if [[ -z $go_bin ]]; then
    case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64 | arm64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac
    go_bin="$(fetch_go "$arch")"
  fi
  # GOTOOLCHAIN=auto lets a Go older than buf's go.mod fetch the newer toolchain itself.
  GOBIN="$ROOT/bin" GOTOOLCHAIN=auto "$go_bin" install "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
fi
echo "ok: buf $(bin/buf --version)"

step "the tests' Kubernetes control plane (API server, scheduler, controller-manager, etcd, kwok; from the Go module proxy)"
kube_go="$(go_for_buf)"
if [[ -z $kube_go ]]; then
  case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64 | arm64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac
  kube_go="$(fetch_go "$arch")"
fi
GO="$kube_go" GOTOOLCHAIN=auto bash deploy/local/kube/build.sh
