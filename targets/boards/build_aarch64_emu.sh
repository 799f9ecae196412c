#!/usr/bin/env bash
# Build the emulated ARM64 board into build/boards/aarch64-emu:
#   lib/libtvm_runtime.so, lib/libtvm_ffi.so   TVM's own aarch64 runtime, unpacked from the
#                                              aarch64 wheels of apache-tvm / apache-tvm-ffi
#                                              (the versions installed in the venv), from PyPI
#   bin/tvm_board_server                       board_server.cc, cross-linked against them
# Needs: g++-aarch64-linux-gnu (Debian), pip. Runs under qemu-aarch64 -L /usr/aarch64-linux-gnu.
source "$(dirname "${BASH_SOURCE[0]}")/build_common.sh"
NAME=aarch64-emu
CXX=aarch64-linux-gnu-g++
command -v "$CXX" >/dev/null || { log "$CXX not found: install g++-aarch64-linux-gnu (make system-deps)"; exit 1; }

BOARD_EXTRA="$($CXX --version | head -1)"
if board_cached "$NAME" "$HERE/build_common.sh" "$HERE/build_aarch64_emu.sh" "$HERE/board_server.cc"; then
  exit 0
fi

start=$SECONDS
wheels="$DOWNLOADS/aarch64-$TVM_VERSION-$FFI_VERSION"
if ! ls "$wheels"/apache_tvm-*.whl "$wheels"/apache_tvm_ffi-*.whl >/dev/null 2>&1; then
  log "downloading the aarch64 wheels of apache-tvm==$TVM_VERSION and apache-tvm-ffi==$FFI_VERSION"
  rm -rf "$wheels.tmp" && mkdir -p "$wheels.tmp"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    -d "$wheels.tmp" "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$FFI_VERSION"
  rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
fi

out="$BOARDS_DIR/$NAME"
stage="$out.tmp"
rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/lib" "$stage/src"
unzip_prefix "$(ls "$wheels"/apache_tvm-*.whl)" tvm/lib/libtvm_runtime.so "$stage/lib/libtvm_runtime.so"
unzip_prefix "$(ls "$wheels"/apache_tvm_ffi-*.whl)" tvm_ffi/lib/libtvm_ffi.so "$stage/lib/libtvm_ffi.so"
unzip_prefix "$(ls "$wheels"/apache_tvm_ffi-*.whl)" tvm_ffi/include/ "$stage/src/include"

log "linking tvm_board_server for aarch64"
"$CXX" -std=c++17 -O2 -I"$stage/src/include" "$HERE/board_server.cc" -o "$stage/bin/tvm_board_server" \
  -L"$stage/lib" -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -Wl,--as-needed -Wl,-rpath,'$ORIGIN/../lib'
rm -rf "$stage/src"
echo "apache-tvm $TVM_VERSION / apache-tvm-ffi $FFI_VERSION aarch64 wheels; $($CXX --version | head -1)" >"$stage/BUILD_INFO"
rm -rf "$out" && mv "$stage" "$out"
board_store "$NAME"
log "$NAME took $((SECONDS - start)) s"
