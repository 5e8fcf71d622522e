# Sourced by the scripts that build test tools from Go modules
# (scripts/control-plane.sh, scripts/helm.sh, scripts/node.sh): build a folder once per
# version, under a lock, beside its final place under a temporary name, and
# rename it into place, so that parallel callers wait for one build and a
# killed build never leaves a half folder.

# Runs a command as a child that a signal to the script also stops: bash
# alone would wait for it, and an orphaned go build would write on.
child=
run() {
  "$@" &
  child=$!
  wait "$child"
  child=
}
on_signal() {
  [[ -n $child ]] && kill "$child" 2>/dev/null && wait "$child" 2>/dev/null
  exit 130
}
trap on_signal INT TERM HUP

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# progress TAG TOTAL STARTED
#   Reads `go build -v` (it names each package on stderr as it is compiled) and
#   says every 30 s how far the build is; other lines (compiler errors) pass
#   through. Cached packages are not named, so TOTAL is an upper bound.
progress() {
  local tag=$1 total=$2 started=$3 n=0 last=$SECONDS line
  while IFS= read -r line; do
    if [[ $line =~ ^[A-Za-z0-9._/~+-]+$ ]]; then
      n=$((n + 1))
      if ((SECONDS - last >= 30)); then
        last=$SECONDS
        echo "$tag: compiling: $n of at most $total packages, $(since "$started") so far" >&2
      fi
    else
      printf '%s\n' "$line" >&2
    fi
  done
}

# need_go TAG WHAT
#   Fails with a line saying what needs Go and how to do without it.
need_go() {
  command -v go >/dev/null 2>&1 && return
  echo "$1: go is not on PATH: building $2 needs Go (see the go.mod for the version) and the Go module proxy. Without Go: cargo test --features skip-e2e runs every other test (docs/testing.md)" >&2
  exit 1
}

# build_once TAG PARENT NAME BUILT BUILD
#   Makes PARENT/NAME unless the command BUILT says it is there: BUILD runs
#   with an empty temporary folder as its argument, which then becomes
#   PARENT/NAME. TAG prefixes the progress lines on stderr.
build_once() {
  local tag=$1 parent=$2 name=$3 is_built=$4 make=$5 start tmp
  "$is_built" && return
  mkdir -p "$parent"
  # One build at a time (parallel test binaries may all ask for it); whoever
  # waited finds the folder done.
  exec 9>"$parent/.lock"
  flock 9
  "$is_built" && return
  start=$(now)
  # What a killed build left behind (the lock is ours, so nobody builds there).
  rm -rf "$parent/.$name".*
  tmp=$(mktemp -d "$parent/.$name.XXXXXX")
  # shellcheck disable=SC2064 # expand $tmp now
  trap "rm -rf '$tmp'" EXIT
  chmod 755 "$tmp"
  "$make" "$tmp"
  mv -T "$tmp" "$parent/$name"
  trap - EXIT
  echo "$tag: built in $(since "$start")" >&2
}
