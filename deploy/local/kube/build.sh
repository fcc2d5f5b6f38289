#!/usr/bin/env bash
# Build the test control plane once per machine: kube-apiserver, kube-scheduler,
# kube-controller-manager (Kubernetes v1.37.2), etcd v3.7.0 and kwok v0.8.0, each
# from the Go module proxy through the wrapper module beside this script (go.mod and
# go.sum lock them). A cold build takes minutes on 2 cores, so the binaries live in
# a cache outside the checkout, keyed on those files: a fresh clone on the same
# machine reuses them. The checkout's .tools/kube points at the binaries' folder.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
checkout="$(cd "$here/../../.." && pwd)"
KUBE_VERSION=v1.37.2
GO="${GO:-go}"

key="$(cat "$here/build.sh" "$here"/go.{mod,sum} "$here"/etcd/go.{mod,sum} "$here"/kwok/go.{mod,sum} \
  | sha256sum | cut -c1-16)"
cache="${STRATA_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/strata/kube}/$key"
binaries=(kube-apiserver kube-scheduler kube-controller-manager etcd kwok)

link() {
  mkdir -p "$checkout/.tools"
  ln -sfn "$cache" "$checkout/.tools/kube"
}

if [[ -f $cache/complete ]]; then
  link
  echo "ok: Kubernetes $KUBE_VERSION control plane, etcd and kwok ($cache)"
  exit 0
fi

echo "building the test control plane (Kubernetes $KUBE_VERSION, etcd, kwok); a cold build takes minutes"
staging="$cache.partial"
rm -rf "$staging"
mkdir -p "$staging/bin"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
version="k8s.io/component-base/version"
(cd "$here" && "$GO" build -trimpath -o "$staging/bin/" -ldflags "-s -w \
  -X $version.gitVersion=$KUBE_VERSION -X $version.gitMajor=1 -X $version.gitMinor=37 \
  -X $version.gitTreeState=clean" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kube-controller-manager)
(cd "$here/etcd" && "$GO" build -trimpath -ldflags "-s -w" -o "$staging/bin/etcd" go.etcd.io/etcd/server/v3)
(cd "$here/kwok" && "$GO" build -trimpath -ldflags "-s -w" -o "$staging/bin/" sigs.k8s.io/kwok/cmd/kwok)
for binary in "${binaries[@]}"; do
  test -x "$staging/bin/$binary" || { echo "build.sh: $binary was not built" >&2; exit 1; }
done
touch "$staging/complete"
rm -rf "$cache"
mv "$staging" "$cache"
link
echo "ok: Kubernetes $KUBE_VERSION control plane, etcd and kwok built into $cache"
