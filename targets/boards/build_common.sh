# Shared by build_*_emu.sh (sourced, not run). Sets paths and provides:
#   board_cached NAME INPUTS...   (BOARD_EXTRA: a string that also identifies the build;
#                                 BOARD_PRODUCT: the file a finished build has, default
#                                 bin/tvm_board_server)
#                                 0 if build/boards/NAME is up to date with INPUTS (copying it
#                                 from the user cache when an identical build is there)
#   board_store NAME              record build/boards/NAME as built from those inputs
# A build is identified by a hash of its inputs (the scripts, board_server.cc, the compat
# headers, the TVM / tvm-ffi versions, the cross compiler's version). Identical builds are
# kept in ${TVM_INTQ_CACHE_DIR:-~/.cache/tvm-intq}/boards/NAME-HASH, so a fresh clone on the
# same machine (CI) reuses them; anywhere else the build simply runs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
BOARDS_DIR="${TVM_INTQ_BOARDS_DIR:-$REPO/build/boards}"
CACHE_DIR="${TVM_INTQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tvm-intq}/boards"
DOWNLOADS="$BOARDS_DIR/downloads"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TVM_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("apache-tvm"))')"
FFI_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("apache-tvm-ffi"))')"
JOBS="${JOBS:-$(nproc)}"

log() { echo "boards: $*" >&2; }

_board_hash() {  # NAME INPUTS...
  local name=$1; shift
  {
    echo "$name $TVM_VERSION $FFI_VERSION ${BOARD_EXTRA:-} $("$PY" -c 'import sys; print(sys.version_info[:2])')"
    for f in "$@"; do  # contents and names relative to the inputs: the same in any clone
      if [[ -d "$f" ]]; then
        (cd "$f" && find . -type f | LC_ALL=C sort | xargs sha256sum)
      else
        echo "$(basename "$f") $(sha256sum <"$f")"
      fi
    done
  } | sha256sum | cut -c1-16
}

board_cached() {  # NAME INPUTS...
  local name=$1 out="$BOARDS_DIR/$1"
  BOARD_HASH="$(_board_hash "$@")"
  local product="${BOARD_PRODUCT:-bin/tvm_board_server}"
  if [[ -f "$out/.hash" && "$(cat "$out/.hash")" == "$BOARD_HASH" && -e "$out/$product" ]]; then
    log "$name up to date ($out)"
    return 0
  fi
  local cached="$CACHE_DIR/$name-$BOARD_HASH"
  if [[ -f "$cached/.hash" && -e "$cached/$product" ]]; then
    rm -rf "$out" && mkdir -p "$BOARDS_DIR" && cp -a "$cached" "$out"
    log "$name reused from $cached"
    return 0
  fi
  return 1
}

board_store() {  # NAME (after the build wrote $BOARDS_DIR/NAME)
  local name=$1 out="$BOARDS_DIR/$1"
  echo "$BOARD_HASH" >"$out/.hash"
  local cached="$CACHE_DIR/$name-$BOARD_HASH"
  if mkdir -p "$CACHE_DIR" 2>/dev/null; then
    rm -rf "$cached.tmp" && cp -a "$out" "$cached.tmp" && rm -rf "$cached" && mv "$cached.tmp" "$cached" || true
  fi
  log "$name built: $out"
}

# Extract members of a wheel (a zip) whose path starts with PREFIX into DEST, stripping PREFIX.
unzip_prefix() {  # WHEEL PREFIX DEST
  "$PY" - "$@" <<'PYEOF'
import os, sys, zipfile
wheel, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not names:
        sys.exit(f"{wheel}: nothing under {prefix}")
    for n in names:
        rest = n[len(prefix):]
        path = os.path.join(dest, rest) if rest else dest
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(n) as src, open(path, "wb") as dst:
            dst.write(src.read())
PYEOF
}
