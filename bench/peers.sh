#!/usr/bin/env bash
# The build benchmark's (a)–(d) for buildpy, BuildKit (dockerd from ../shared/tools/peers.sh)
# and buildah (`bud --layers --isolation chroot`), in one run on the same inputs, as whole
# processes. Cold runs clear each builder's cache first (not timed). Medians of N runs.
#   source <(bash ../shared/tools/peers.sh); bash bench/peers.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-5}"
W="${BENCH_WORK:-/tmp/buildpy-peers-bench}"
grep -o " $W[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true  # a killed run's buildah mounts
rm -rf "$W"; mkdir -p "$W"
BP="$PWD/.venv/bin/buildpy"
unset PYTHONDONTWRITEBYTECODE  # an installed buildpy has its bytecode
.venv/bin/python -c "import compileall; compileall.compile_dir('buildpy', quiet=1)"
.venv/bin/python -m bench.buildcases "$W/in"
.venv/bin/python -c "
from buildpy.cas.store import Store
from tests.imagekit import busybox_image
busybox_image(Store('$W/base'))"
"$BP" --root "$W/base" export --docker -o "$W/busybox.tar" busybox
have_docker=0
DOCKER="${BENCH_DOCKER:-docker}"
if [ -n "${DOCKER_HOST:-}" ] && "$DOCKER" version >/dev/null 2>&1; then
  "$DOCKER" load -q -i "$W/busybox.tar" >/dev/null && have_docker=1
fi
BS=(--root "$W/buildah-root" --runroot "$W/buildah-run" --storage-driver overlay)
skopeo copy -q "docker-archive:$W/busybox.tar" \
  "containers-storage:[overlay@$W/buildah-root+$W/buildah-run]docker.io/library/busybox:latest"

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; exit 1; }; e=$(date +%s.%N); echo "$e - $s" | bc; }

# each cold run starts after the previous run's writes and deletions reached the disk (sync, untimed)
cold_buildpy() { rm -rf "$W/s"; cp -a "$W/base" "$W/s"; sync; t "$BP" --root "$W/s" build --progress quiet -t b "$1"; }
warm_buildpy() { t "$BP" --root "$W/s" build --progress quiet -t b "$1"; }
cold_docker() { "$DOCKER" builder prune -af >/dev/null 2>&1; "$DOCKER" rmi -f b >/dev/null 2>&1 || true; sync
                DOCKER_BUILDKIT=1 t "$DOCKER" build --network host -q -t b "$1"; }
warm_docker() { DOCKER_BUILDKIT=1 t "$DOCKER" build --network host -q -t b "$1"; }
cold_buildah() { buildah "${BS[@]}" rmi -f b >/dev/null 2>&1 || true; buildah "${BS[@]}" rmi --prune >/dev/null 2>&1 || true; sync
                 t buildah "${BS[@]}" bud -q --layers --isolation chroot --pull-never -t b "$1"; }
warm_buildah() { t buildah "${BS[@]}" bud -q --layers --isolation chroot --pull-never -t b "$1"; }

row() {  # tool case
  local tool=$1 case=$2 xs=() i
  for i in $(seq "$N"); do
    case $case in
      a) xs+=("$(cold_"$tool" "$W/in/copy")") ;;
      b) [ "$i" = 1 ] && { cold_"$tool" "$W/in/copy" >/dev/null; warm_"$tool" "$W/in/copy" >/dev/null; }
         xs+=("$(warm_"$tool" "$W/in/copy")") ;;
      c) [ "$i" = 1 ] && cold_"$tool" "$W/in/copy" >/dev/null
         echo "changed $tool $i $RANDOM" > "$W/in/copy/dir000/file00000.dat"
         xs+=("$(warm_"$tool" "$W/in/copy")") ;;
      d) xs+=("$(cold_"$tool" "$W/in/parallel")") ;;
    esac
  done
  printf '%s\n' "${xs[@]}" | median
}

tools=(buildpy buildah)
[ "$have_docker" = 1 ] && tools=(buildpy docker buildah)
printf '%-8s %8s %8s %8s %8s\n' tool a b c d
for tool in "${tools[@]}"; do
  printf '%-8s %8s %8s %8s %8s\n' "$tool" "$(row "$tool" a)" "$(row "$tool" b)" "$(row "$tool" c)" "$(row "$tool" d)"
done
