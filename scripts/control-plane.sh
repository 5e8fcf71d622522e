#!/usr/bin/env bash
# The real Kubernetes control plane for the end-to-end tests: kube-apiserver,
# kube-scheduler, kube-controller-manager and etcd, built from their Go modules (e2e/control-plane).
#
#   scripts/control-plane.sh [build]   build once, then print the bin folder
#   scripts/control-plane.sh path      print the bin folder (does not build)
#   scripts/control-plane.sh bump vX.Y.Z   move e2e/control-plane to that
#                                      kubernetes release (needs the network)
#
# The binaries land in target/control-plane/<kube version>-etcd<etcd version>/bin/.
# A later `build` finds that folder and returns at once. The folder is built
# beside it under a temporary name and renamed into place, so a killed build
# never leaves a half folder. Progress and timings go to stderr; stdout gets
# only the bin folder. Works from any directory.
#
# Versions come from e2e/control-plane/go.mod: bumping them there (see its
# README) gives a new folder and a new build.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$root/e2e/control-plane"

# The version a module is required at in go.mod (its require line, not the
# tool or replace lines).
modver() {
  awk -v m="$1" '$1 == m && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod/go.mod"
}

kube_version=$(modver k8s.io/kubernetes)
etcd_version=$(modver go.etcd.io/etcd/server/v3)
if [[ -z $kube_version || -z $etcd_version ]]; then
  echo "control-plane: cannot read the kubernetes and etcd versions from $mod/go.mod" >&2
  exit 1
fi

parent="$root/target/control-plane"
name="${kube_version}-etcd${etcd_version#v}"
dir="$parent/$name"
bin="$dir/bin"
binaries=(kube-apiserver kube-scheduler kube-controller-manager etcd)

built() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

# shellcheck source=lib/build-once.sh
. "$root/scripts/lib/build-once.sh"

# Builds the four binaries into the folder $1 (its bin/).
compile() {
  local tmp=$1 t major minor rest date ldflags pkg total
  need_go control-plane "kube-apiserver, kube-scheduler, kube-controller-manager and etcd"
  mkdir "$tmp/bin"
  echo "control-plane: building kube-apiserver, kube-scheduler, kube-controller-manager $kube_version and etcd $etcd_version into $dir (cold Go caches: about 11.5 minutes on 2 cores, progress every 30 s; warm: seconds)" >&2

  cd "$mod"
  # The environment's GOFLAGS (such as -buildvcs=false) stay; the flags given
  # on the command line below win over them.
  export GOWORK=off CGO_ENABLED=0
  local pkgs=(
    k8s.io/kubernetes/cmd/kube-apiserver
    k8s.io/kubernetes/cmd/kube-scheduler
    k8s.io/kubernetes/cmd/kube-controller-manager
    go.etcd.io/etcd/server/v3
  )
  t=$(now)
  # Downloads into the Go module cache just the modules these packages need.
  echo "control-plane: downloading the modules (about 20 s with an empty module cache)" >&2
  run go list -mod=readonly -deps "${pkgs[@]}" >"$tmp/deps"
  total=$(wc -l <"$tmp/deps")
  rm "$tmp/deps"
  echo "control-plane: modules ready in $(since "$t"); compiling $total packages (about 11 minutes with an empty Go build cache)" >&2

  # What kube components print for --version and take as their binary
  # version: kubernetes' hack/lib/version.sh sets the same variables. The date
  # is the release's publication time, so the build stays reproducible.
  rest=${kube_version#v}
  major=${rest%%.*}
  rest=${rest#*.}
  minor=${rest%%.*}
  date=$(go list -mod=readonly -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=archive -X $pkg.gitCommit= -X $pkg.buildDate=$date"
  done

  t=$(now)
  run go build -v -mod=readonly -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp/bin/" "${pkgs[@]}" \
    2> >(progress control-plane "$total" "$t")
  # The etcd main package is the root of go.etcd.io/etcd/server/v3, which go
  # names "server".
  mv "$tmp/bin/server" "$tmp/bin/etcd"
  echo "control-plane: compiled in $(since "$t")" >&2
}

build() {
  build_once control-plane "$parent" "$name" built compile
  echo "$bin"
}

# Pins e2e/control-plane to another kubernetes release: etcd's server at the
# version that release pins for its etcd client, and each of its staging
# modules (its own go.mod's replace block) at the matching v0.Y.Z.
bump() {
  local kube=${1:?usage: $0 bump vX.Y.Z} gomod etcd
  [[ $kube =~ ^v1\.[0-9]+\.[0-9]+$ ]] || { echo "control-plane: not a release: $kube" >&2; exit 2; }
  cd "$mod"
  export GOWORK=off
  gomod=$(go mod download -json "k8s.io/kubernetes@$kube" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  etcd=$(awk '$1 == "go.etcd.io/etcd/client/v3" { print $2; exit }' "$gomod")
  go mod edit -require="k8s.io/kubernetes@$kube" -require="go.etcd.io/etcd/server/v3@$etcd"
  # The replace block is the last thing in go.mod.
  {
    sed '/^replace (/,$d' go.mod
    echo 'replace ('
    sed -n '/^replace (/,/^)/p' "$gomod" |
      awk -v v="v0.${kube#v1.}" '/=>/ { printf "\t%s => %s %s\n", $1, $1, v }'
    echo ')'
  } >go.mod.new
  mv go.mod.new go.mod
  go mod tidy
  echo "control-plane: kubernetes $kube, etcd $etcd; go.mod says: $(awk '$1 == "go" { print $2 }' go.mod)" >&2
}

case "${1:-build}" in
  build) build ;;
  path) echo "$bin" ;;
  bump) bump "${2:-}" ;;
  -h | --help | help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    echo "usage: $0 [build|path|bump vX.Y.Z]" >&2
    exit 2
    ;;
esac
