#!/usr/bin/env bash
# helm for the chart tests (charts/volguard): `helm lint`, `helm template`,
# and `helm install`/`upgrade` against the test control plane, built from its
# Go module (e2e/helm).
#
#   scripts/helm.sh [build]   build once, then print the path of the binary
#   scripts/helm.sh path      print that path (does not build)
#
# The binary lands in target/helm/<helm version>/bin/helm. A later `build`
# finds it and returns at once. It is built beside its folder under a
# temporary name and renamed into place, so a killed build never leaves a
# half folder. Progress and timings go to stderr; stdout gets only the path.
# Works from any directory. The version comes from e2e/helm/go.mod: bumping it
# there (see its README) gives a new folder and a new build.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$root/e2e/helm"

version=$(awk '$1 == "helm.sh/helm/v4" && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod/go.mod")
if [[ -z $version ]]; then
  echo "helm: cannot read the helm.sh/helm/v4 version from $mod/go.mod" >&2
  exit 1
fi

parent="$root/target/helm"
dir="$parent/$version"
helm="$dir/bin/helm"

built() { [[ -x $helm ]]; }

# shellcheck source=lib/build-once.sh
. "$root/scripts/lib/build-once.sh"

# Builds helm into the folder $1 (its bin/).
compile() {
  local tmp=$1 t total pkg=helm.sh/helm/v4/internal/version
  need_go helm helm
  mkdir "$tmp/bin"
  echo "helm: building helm $version into $dir (cold Go caches: 2 to 4 minutes on 2 cores; warm: seconds)" >&2
  cd "$mod"
  # The environment's GOFLAGS (such as -buildvcs=false) stay; the flags given
  # on the command line below win over them.
  export GOWORK=off CGO_ENABLED=0
  t=$(now)
  # Downloads into the Go module cache just the modules helm needs.
  run go list -mod=readonly -deps helm.sh/helm/v4/cmd/helm >"$tmp/deps"
  total=$(wc -l <"$tmp/deps")
  rm "$tmp/deps"
  echo "helm: modules ready in $(since "$t"); compiling $total packages" >&2
  # What `helm version` prints: helm's Makefile sets the same variables for a
  # release build (no commit: the module has none).
  t=$(now)
  run go build -v -mod=readonly -trimpath -buildvcs=false \
    -ldflags "-s -w -X $pkg.version=$version -X $pkg.metadata= -X $pkg.gitTreeState=clean" \
    -o "$tmp/bin/helm" helm.sh/helm/v4/cmd/helm \
    2> >(progress helm "$total" "$t")
  echo "helm: compiled in $(since "$t")" >&2
}

case "${1:-build}" in
  build)
    build_once helm "$parent" "$version" built compile
    echo "$helm"
    ;;
  path) echo "$helm" ;;
  -h | --help | help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    echo "usage: $0 [build|path]" >&2
    exit 2
    ;;
esac
