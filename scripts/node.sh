#!/usr/bin/env bash
# A real Kubernetes node for the end-to-end tests: the kubelet, containerd (with
# ctr and the runc shim), runc, the CNI plugins loopback, bridge and host-local,
# crictl and the test device plugin, built from their Go modules (e2e/node/*,
# e2e/control-plane for the kubelet, so that it matches kube-apiserver, and
# e2e/device-plugin).
#
#   scripts/node.sh [build]   build once, then print the bin folder
#   scripts/node.sh path      print the bin folder (does not build)
#
# The binaries land in target/node/<versions>/bin/. A later `build` finds that
# folder and returns at once. The folder is built beside it under a temporary
# name and renamed into place, so a killed build never leaves a half folder.
# Progress and timings go to stderr; stdout gets only the bin folder. Works
# from any directory.
#
# Versions come from the go.mod files, and the device plugin's sources give a
# hash: bumping a version or changing the plugin gives a new folder and a new
# build. runc needs cgo and libseccomp's headers (Debian:
# libseccomp-dev); the rest is static.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
e2e="$root/e2e"

# The version a module is required at in a go.mod (its require line, not the
# tool or replace lines).
modver() {
  awk -v m="$2" '$1 == m && $2 ~ /^v[0-9]/ { print $2; exit }' "$1/go.mod"
}

kube_version=$(modver "$e2e/control-plane" k8s.io/kubernetes)
runc_version=$(modver "$e2e/node/runc" github.com/opencontainers/runc)
containerd_version=$(modver "$e2e/node/containerd" github.com/containerd/containerd/v2)
cni_version=$(modver "$e2e/node/cni" github.com/containernetworking/plugins)
crictl_version=$(modver "$e2e/node/cri-tools" sigs.k8s.io/cri-tools)
for v in kube_version runc_version containerd_version cni_version crictl_version; do
  if [[ -z ${!v} ]]; then
    echo "node: cannot read ${v%_version}'s version from the go.mod files under $e2e" >&2
    exit 1
  fi
done

# The device plugin is ours: its sources stand for its version.
plugin_hash=$(cd "$e2e/device-plugin" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-12)

parent="$root/target/node"
name="${kube_version}-containerd${containerd_version#v}-runc${runc_version#v}-cni${cni_version#v}-crictl${crictl_version#v}-plugin${plugin_hash}"
dir="$parent/$name"
bin="$dir/bin"
binaries=(kubelet containerd ctr containerd-shim-runc-v2 runc loopback bridge host-local crictl volume-device-plugin)

built() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

# shellcheck source=lib/build-once.sh
. "$root/scripts/lib/build-once.sh"

# gobuild TAG MODULE-DIR OUT GO-BUILD-ARGS...
#   Builds packages of the module in MODULE-DIR into OUT, saying how long it
#   took. The environment (CGO_ENABLED) comes from the caller.
gobuild() {
  local tag=$1 moddir=$2 out=$3 t
  shift 3
  echo "node: compiling $tag" >&2
  t=$(now)
  run go -C "$moddir" build -mod=readonly -trimpath -buildvcs=false -o "$out" "$@"
  echo "node: ${tag%% (*} compiled in $(since "$t")" >&2
}

# Builds the binaries into the folder $1 (its bin/).
compile() {
  local tmp=$1 t m rest major minor date ldflags pkg total out
  need_go node "the kubelet, containerd, runc, the CNI plugins, crictl and the device plugin"
  if ! command -v gcc >/dev/null 2>&1 || ! pkg-config --cflags libseccomp >/dev/null 2>&1 ||
    ! echo '#include <seccomp.h>' | gcc -E - >/dev/null 2>&1; then
    echo "node: runc needs gcc, pkg-config and libseccomp's headers (Debian: apt-get install gcc libc6-dev pkgconf libseccomp-dev)" >&2
    exit 1
  fi
  out="$tmp/bin"
  mkdir "$out"
  echo "node: building kubelet $kube_version, containerd $containerd_version, runc $runc_version, CNI plugins $cni_version, crictl $crictl_version and the device plugin into $dir (cold Go caches: about 10 minutes on 2 cores, the kubelet most of it, progress every 30 s; warm: under a minute)" >&2
  # The environment's GOFLAGS (such as -buildvcs=false) stay; the flags given
  # on the command line below win over them.
  export GOWORK=off

  t=$(now)
  echo "node: downloading the modules (about a minute with an empty module cache)" >&2
  for m in node/runc node/containerd node/cni node/cri-tools device-plugin; do
    run go -C "$e2e/$m" mod download
  done
  run go -C "$e2e/control-plane" list -mod=readonly -deps k8s.io/kubernetes/cmd/kubelet >"$tmp/deps"
  total=$(wc -l <"$tmp/deps")
  rm "$tmp/deps"
  echo "node: modules ready in $(since "$t")" >&2

  # runc: cgo for libseccomp, as runc's Makefile builds it (its version is
  # embedded from its VERSION file).
  export CGO_ENABLED=1
  gobuild "runc $runc_version (about 1 minute cold)" "$e2e/node/runc" "$out/runc" \
    -tags seccomp -ldflags "-s -w" github.com/opencontainers/runc

  export CGO_ENABLED=0
  # containerd's Makefile sets these; no revision (the module has none). The
  # storage drivers this node does not use are left out (overlayfs is in).
  pkg=github.com/containerd/containerd/v2
  gobuild "containerd $containerd_version (about 2 minutes cold)" "$e2e/node/containerd" "$out/" \
    -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X $pkg/version.Version=$containerd_version -X $pkg/version.Revision= -X $pkg/version.Package=$pkg" \
    "$pkg/cmd/containerd" "$pkg/cmd/ctr" "$pkg/cmd/containerd-shim-runc-v2"

  pkg=github.com/containernetworking/plugins
  gobuild "CNI plugins $cni_version (about 10 s cold)" "$e2e/node/cni" "$out/" \
    -ldflags "-s -w -X $pkg/pkg/utils/buildversion.BuildVersion=$cni_version" \
    "$pkg/plugins/main/loopback" "$pkg/plugins/main/bridge" "$pkg/plugins/ipam/host-local"

  gobuild "crictl $crictl_version (about 1 minute cold)" "$e2e/node/cri-tools" "$out/crictl" \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version" \
    sigs.k8s.io/cri-tools/cmd/crictl

  gobuild "the device plugin (about 20 s cold)" "$e2e/device-plugin" "$out/volume-device-plugin" \
    -ldflags "-s -w" .

  # The kubelet: the same version stamp as scripts/control-plane.sh gives the
  # control plane (kubernetes' hack/lib/version.sh sets these variables).
  rest=${kube_version#v}
  major=${rest%%.*}
  rest=${rest#*.}
  minor=${rest%%.*}
  date=$(go -C "$e2e/control-plane" list -mod=readonly -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=archive -X $pkg.gitCommit= -X $pkg.buildDate=$date"
  done
  echo "node: compiling the kubelet: at most $total packages (about 6 minutes with an empty Go build cache, less after the control plane's build)" >&2
  t=$(now)
  run go -C "$e2e/control-plane" build -v -mod=readonly -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out/kubelet" k8s.io/kubernetes/cmd/kubelet \
    2> >(progress node "$total" "$t")
  echo "node: kubelet compiled in $(since "$t")" >&2
}

build() {
  build_once node "$parent" "$name" built compile
  echo "$bin"
}

case "${1:-build}" in
  build) build ;;
  path) echo "$bin" ;;
  -h | --help | help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    echo "usage: $0 [build|path]" >&2
    exit 2
    ;;
esac
