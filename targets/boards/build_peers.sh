#!/usr/bin/env bash
# Build the peers' emulated environment into build/boards/peers: what ARM users run instead of
# tvm-intq (ONNX Runtime's MLAS kernels, LiteRT's XNNPACK kernels), on the same qemu-aarch64
# as our libraries, counted by the same plugin (tvm_intq.targets.peers, peer_runner.py):
#   sysroot/    an aarch64 Debian python3.11 and the libraries it loads, unpacked from
#               Debian's arm64 .debs with dpkg-deb -x (nothing arm64 is installed on the
#               system: apt-get runs with a private configuration, as fetch_qemu.sh does,
#               for the host's Debian release, and only downloads)
#   site/       the official aarch64 cp311 wheels of onnxruntime, numpy and ai-edge-litert
#               (and their dependencies), unzipped: the emulated Python's PYTHONPATH
#   VERSIONS    what was unpacked: the .debs and the wheels, one a line
# Run as: qemu-aarch64 -L sysroot sysroot/usr/bin/python3.11 (PYTHONPATH=site).
# Versions: onnxruntime and numpy as installed in the venv (the host quantizes the ONNX
# Runtime int8 model with that version); ai-edge-litert at LITERT_VERSION, the newest release
# with a Linux aarch64 wheel (2.x ship x86-64 and macOS arm64 wheels only).
# Needs: apt-get and dpkg-deb (Debian), pip, fetch_qemu.sh's qemu-aarch64 for the smoke test.
# ~230 MB; a few minutes the first time, then reused from the user cache.
source "$(dirname "${BASH_SOURCE[0]}")/build_common.sh"
NAME=peers
BOARD_PRODUCT=sysroot/usr/bin/python3.11
LITERT_VERSION="${LITERT_VERSION:-1.4.0}"
# The packages whose dependency closure makes the sysroot: the interpreter, its standard
# library's extension modules' libraries (ctypes: libffi, ssl, sqlite3, ...) and libstdc++,
# which the wheels' C++ extensions link.
DEB_ROOTS=(python3.11-minimal libpython3.11-stdlib libstdc++6 libgcc-s1)
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || { log "not a Debian system: build_peers.sh needs apt-get and dpkg-deb"; exit 1; }
SUITE="${PEERS_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
ORT_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')"
NUMPY_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("numpy"))')"
WHEELS=("onnxruntime==$ORT_VERSION" "numpy==$NUMPY_VERSION" "ai-edge-litert==$LITERT_VERSION")

BOARD_EXTRA="$SUITE ${WHEELS[*]} ${DEB_ROOTS[*]}"
if board_cached "$NAME" "$HERE/build_common.sh" "$HERE/build_peers.sh"; then
  exit 0
fi
start=$SECONDS
out="$BOARDS_DIR/$NAME"
stage="$out.tmp"
rm -rf "$stage" && mkdir -p "$stage/sysroot" "$stage/site"

# --------------------------------------------------------------- Debian arm64 packages
apt="$BOARDS_DIR/peers.apt"
rm -rf "$apt" && mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/deb"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
{
  echo "deb [arch=arm64 signed-by=$keyring] $MIRROR $SUITE main"
  echo "deb [arch=arm64 signed-by=$keyring] $MIRROR $SUITE-updates main"
  echo "deb [arch=arm64 signed-by=$keyring] $SECURITY_MIRROR $SUITE-security main"
} >"$apt/sources.list"
# arm64 only, and an empty dpkg status: apt resolves the whole dependency closure as for an
# empty arm64 system, whatever this machine has installed.
APTO=(-o Dir::Etc::sourcelist="$apt/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$apt/lists"
      -o Dir::Cache="$apt/cache" -o Debug::NoLocking=true -o APT::Sandbox::User="$(id -un)"
      -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Dir::State::status=/dev/null)
log "fetching the arm64 package index of $SUITE"
apt-get "${APTO[@]}" -qq update >"$apt/update.log" 2>&1 || true
# "Inst NAME (VERSION ...)" for every package an install of the roots would unpack
mapfile -t debs < <(apt-get "${APTO[@]}" -s --no-install-recommends install "${DEB_ROOTS[@]}" 2>"$apt/resolve.log" \
                    | awk '$1 == "Inst" {gsub(/[()]/, "", $3); print $2 ":arm64=" $3}')
(( ${#debs[@]} )) || { cat "$apt/update.log" "$apt/resolve.log" >&2; log "cannot resolve ${DEB_ROOTS[*]} for arm64 in $SUITE"; exit 1; }
log "downloading ${#debs[@]} arm64 .debs (python3.11 and the libraries it loads, ~15 MB)"
(cd "$apt/deb" && apt-get "${APTO[@]}" -qq download "${debs[@]}" >"$apt/download.log" 2>&1) \
  || { cat "$apt/download.log" >&2; exit 1; }
for deb in "$apt"/deb/*.deb; do dpkg-deb -x "$deb" "$stage/sysroot"; done
printf 'deb %s\n' "${debs[@]}" >"$stage/VERSIONS"
rm -rf "$apt"

# --------------------------------------------------------------- aarch64 wheels
wheels="$DOWNLOADS/peers-wheels-$(echo "${WHEELS[*]}" | sha256sum | cut -c1-12)"
if [[ ! -f "$wheels/.complete" ]]; then
  log "downloading the aarch64 cp311 wheels of ${WHEELS[*]} and their dependencies"
  rm -rf "$wheels" && mkdir -p "$wheels"
  "$PY" -m pip download --quiet --only-binary=:all: --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none --platform manylinux2014_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 --platform any \
    -d "$wheels" "${WHEELS[@]}" 2> >(grep -v "^WARNING: Location" >&2)
  touch "$wheels/.complete"
fi
for whl in "$wheels"/*.whl; do
  "$PY" -m zipfile -e "$whl" "$stage/site"
  echo "wheel $(basename "$whl")" >>"$stage/VERSIONS"
done

# --------------------------------------------------------------- smoke test
qemu="$BOARDS_DIR/qemu/bin/qemu-aarch64"
[[ -x "$qemu" ]] || qemu="$(command -v qemu-aarch64 || true)"
[[ -n "$qemu" ]] || { log "qemu-aarch64 not found: run fetch_qemu.sh first (make boards)"; exit 1; }
log "checking that the emulated Python imports onnxruntime and ai_edge_litert"
"$qemu" -cpu neoverse-n1 -L "$stage/sysroot" -E PYTHONPATH="$stage/site" -E OPENBLAS_NUM_THREADS=1 \
  "$stage/sysroot/usr/bin/python3.11" -c \
  'import numpy, onnxruntime, ai_edge_litert.interpreter; print("python", __import__("sys").version.split()[0], "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)' \
  >"$stage/SMOKE" || { log "the emulated Python failed to import the peers"; exit 1; }
log "$(cat "$stage/SMOKE")"
rm -rf "$out" && mv "$stage" "$out"
board_store "$NAME"
log "$NAME took $((SECONDS - start)) s"
