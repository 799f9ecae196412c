#!/usr/bin/env bash
# Build the emulated RISC-V64 board into build/boards/riscv64-emu. No riscv64 wheel of TVM
# exists, so this cross-builds, with Debian's riscv64 g++ and CMake >= 3.26 (from PyPI):
#   lib/libtvm_ffi.so       the installed apache-tvm-ffi wheel's sources, with its CMakeLists
#   lib/libtvm_runtime.so   the installed apache-tvm wheel's runtime sources (CPU, Relax VM,
#                           memory, RPC; see compat/README.md for what is left out and for
#                           the few headers the wheel lacks)
#   bin/tvm_board_server    board_server.cc
# Runs under qemu-riscv64 -L /usr/riscv64-linux-gnu -cpu rv64,v=true,vlen=128.
source "$(dirname "${BASH_SOURCE[0]}")/build_common.sh"
NAME=riscv64-emu
TIRX_VERSION=0.1.0a4   # ships tvm/support/{io,serializer,bytes_io}.h (the wheel lacks them)
for tool in riscv64-linux-gnu-gcc riscv64-linux-gnu-g++; do
  command -v "$tool" >/dev/null || { log "$tool not found: install g++-riscv64-linux-gnu (make system-deps)"; exit 1; }
done

BOARD_EXTRA="tirx $TIRX_VERSION $(riscv64-linux-gnu-g++ --version | head -1)"
if board_cached "$NAME" "$HERE/build_common.sh" "$HERE/build_riscv64_emu.sh" "$HERE/board_server.cc" \
    "$HERE/runtime" "$HERE/compat"; then
  exit 0
fi
start=$SECONDS

# CMake >= 3.26 (tvm-ffi's CMakeLists needs it; Debian 12 has 3.25): from PyPI, into the venv.
CMAKE="$(dirname "$PY")/cmake"
if ! { [[ -x "$CMAKE" ]] && "$PY" - "$CMAKE" <<'PYEOF'
import re, subprocess, sys
v = re.search(r"(\d+)\.(\d+)", subprocess.run([sys.argv[1], "--version"], capture_output=True, text=True).stdout)
sys.exit(0 if v and (int(v[1]), int(v[2])) >= (3, 26) else 1)
PYEOF
}; then
  log "installing cmake>=3.26 from PyPI into the venv"
  "$PY" -m pip install --quiet "cmake>=3.26"
fi

tirx="$DOWNLOADS/tirx-$TIRX_VERSION"
if ! ls "$tirx"/apache_tvm_tirx-*.whl >/dev/null 2>&1; then
  log "downloading apache-tvm-tirx==$TIRX_VERSION (for tvm/support/{io,serializer,bytes_io}.h)"
  rm -rf "$tirx.tmp" && mkdir -p "$tirx.tmp"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$tirx.tmp" "apache-tvm-tirx==$TIRX_VERSION"
  rm -rf "$tirx" && mv "$tirx.tmp" "$tirx"
fi

work="$BOARDS_DIR/$NAME.build"
stage="$work/stage"
rm -rf "$stage" && mkdir -p "$stage/tvm/src" "$stage/tvm/include/tvm"
log "staging sources from $SITE"
cp -a "$SITE/tvm_ffi" "$stage/tvm_ffi"
rm -rf "$stage/tvm_ffi/cmake" && cp -a "$stage/tvm_ffi/share/cmake/tvm_ffi" "$stage/tvm_ffi/cmake"
cp -a "$SITE/tvm/src/runtime" "$stage/tvm/src/runtime"
cp -a "$HERE/compat/src/support" "$stage/tvm/src/support"
cp -a "$SITE/tvm/include/tvm/runtime" "$stage/tvm/include/tvm/runtime"
cp -a "$HERE/compat/include/tvm/support" "$stage/tvm/include/tvm/support"
for h in io.h serializer.h bytes_io.h; do
  unzip_prefix "$(ls "$tirx"/apache_tvm_tirx-*.whl)" "tvm_tirx/include/tvm/support/$h" "$stage/tvm/include/tvm/support/$h"
done

log "configuring and building (${JOBS} jobs; a few minutes)"
"$CMAKE" -S "$HERE/runtime" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$HERE/runtime/riscv64-linux-gnu.cmake" \
  -DSTAGE="$stage" -DBOARD_SERVER_SRC="$HERE/board_server.cc" >"$work/configure.log" 2>&1 \
  || { tail -30 "$work/configure.log" >&2; exit 1; }
"$CMAKE" --build "$work/build" --target tvm_board_server -j "$JOBS" >"$work/build.log" 2>&1 \
  || { grep -E "error|Error" -A3 "$work/build.log" | head -60 >&2; log "full log: $work/build.log"; exit 1; }

out="$BOARDS_DIR/$NAME"
rm -rf "$out.tmp" && mkdir -p "$out.tmp/bin" "$out.tmp/lib"
cp "$work/build/tvm_board_server" "$out.tmp/bin/"
cp "$work/build/libtvm_runtime.so" "$(find "$work/build" -name libtvm_ffi.so | head -1)" "$out.tmp/lib/"
riscv64-linux-gnu-strip --strip-unneeded "$out.tmp/lib/"*.so "$out.tmp/bin/tvm_board_server"
echo "cross-built from apache-tvm $TVM_VERSION / apache-tvm-ffi $FFI_VERSION sources; $(riscv64-linux-gnu-g++ --version | head -1)" >"$out.tmp/BUILD_INFO"
rm -rf "$out" && mv "$out.tmp" "$out"
board_store "$NAME"
log "$NAME took $((SECONDS - start)) s"
