#!/usr/bin/env bash
# Build what counting executed instructions on the emulated boards needs (tvm_intq.targets.cost):
#   build/boards/qemu-plugins/bin/qemu-{aarch64,riscv64}
#       QEMU linux-user built from Debian's qemu source package, the version fetch_qemu.sh
#       fetched, with --enable-plugins. Why: Debian's qemu-user 10 is statically linked, and a
#       static QEMU cannot load plugins ("unknown option 'plugin'"); Debian 12's dynamically
#       linked qemu-user 7.2 can, but aborts on RVV code (see fetch_qemu.sh). Built from the
#       package's upstream tarball (.orig.tar.xz): Debian's patches are packaging and
#       system-emulation changes, and some mirrors serve no .dsc for backports. Only the two
#       linux-user targets: ~10 min on 2 cores the first time, then kept per QEMU version in
#       the user cache (like fetch_qemu.sh's download).
#   build/boards/insn-count/lib/libinsn_count.so        insn_count_plugin.c
#   build/boards/insn-count/bin/count_runner-<board>    count_runner.cc, cross-linked against
#                                                       each emulated board's TVM runtime
# Needs: make boards' other steps first (fetch_qemu.sh, build_*_emu.sh), libglib2.0-dev and
# ninja-build (Debian; QEMU and its plugin API need glib), meson from PyPI (QEMU 10 needs
# meson >= 1.5, Debian 12 has 1.0; Debian strips the meson wheel QEMU bundles).
source "$(dirname "${BASH_SOURCE[0]}")/build_common.sh"
for tool in cc ninja pkg-config aarch64-linux-gnu-g++ riscv64-linux-gnu-g++; do
  command -v "$tool" >/dev/null || { log "$tool not found (make system-deps installs it)"; exit 1; }
done
pkg-config --exists glib-2.0 || { log "glib-2.0 not found: install libglib2.0-dev (make system-deps)"; exit 1; }
[[ -f "$BOARDS_DIR/qemu/VERSION" ]] || { log "run fetch_qemu.sh first (make boards)"; exit 1; }
# "qemu-riscv64 version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)" -> the Debian version
QEMU_DEB="$(sed -n 's/.*(Debian \(.*\))$/\1/p' "$BOARDS_DIR/qemu/VERSION")"
[[ -n "$QEMU_DEB" ]] || { log "cannot read a Debian version in $BOARDS_DIR/qemu/VERSION"; exit 1; }

# --------------------------------------------------------------- QEMU with plugins
qemu_out="$BOARDS_DIR/qemu-plugins"
qemu_cached="$CACHE_DIR/qemu-plugins-$QEMU_DEB"
qemu_ok() { [[ -x "$1/bin/qemu-aarch64" && -x "$1/bin/qemu-riscv64" && -f "$1/include/qemu-plugin.h"
             && "$(cat "$1/VERSION" 2>/dev/null)" == "$QEMU_DEB" ]]; }
if qemu_ok "$qemu_out"; then
  log "qemu-plugins $QEMU_DEB up to date"
elif qemu_ok "$qemu_cached"; then
  rm -rf "$qemu_out" && cp -a "$qemu_cached" "$qemu_out"
  log "qemu-plugins $QEMU_DEB reused from $qemu_cached"
else
  start=$SECONDS
  src="$DOWNLOADS/qemu-source-$QEMU_DEB"
  if ! ls "$src"/qemu_*.orig.tar.xz >/dev/null 2>&1; then
    # A private apt configuration with a deb-src line, as fetch_qemu.sh does for the binaries.
    apt="$BOARDS_DIR/qemu-src.apt"
    rm -rf "$apt" && mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$src.tmp"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${DEBIAN_MIRROR:-http://deb.debian.org/debian} ${QEMU_SUITE:-bookworm-backports} main" >"$apt/sources.list"
    APTO=(-o Dir::Etc::sourcelist="$apt/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$apt/lists"
          -o Dir::Cache="$apt/cache" -o Debug::NoLocking=true -o APT::Sandbox::User="$(id -un)")
    log "downloading Debian's qemu $QEMU_DEB source package (~40 MB)"
    apt-get "${APTO[@]}" -qq update >"$apt/update.log" 2>&1 || true
    # --download-only: nothing is unpacked or installed; a missing .dsc / debian.tar.xz is
    # tolerated, the upstream tarball is what is built.
    (cd "$src.tmp" && apt-get "${APTO[@]}" -qq source --download-only "qemu=$QEMU_DEB" >"$apt/source.log" 2>&1) || true
    ls "$src.tmp"/qemu_*.orig.tar.xz >/dev/null 2>&1 || { cat "$apt/update.log" "$apt/source.log" >&2; exit 1; }
    rm -rf "$src" && mv "$src.tmp" "$src" && rm -rf "$apt"
  fi
  work="$BOARDS_DIR/qemu-plugins.build"
  rm -rf "$work" && mkdir -p "$work"
  tar -xf "$(ls "$src"/qemu_*.orig.tar.xz)" -C "$work"
  tree="$(ls -d "$work"/qemu-*/)"
  # The meson and pycotap versions QEMU pins (pythondeps.toml), as wheels where QEMU looks.
  pins=$(sed -n 's/^\(meson\|pycotap\) = .*installed = "\([^"]*\)".*/\1==\2/p' "$tree/pythondeps.toml")
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$tree/python/wheels" $pins
  log "configuring QEMU (aarch64-linux-user, riscv64-linux-user, plugins)"
  mkdir -p "$tree/build"
  (cd "$tree/build" && ../configure --python="$(command -v python3)" \
      --target-list=aarch64-linux-user,riscv64-linux-user --enable-plugins --disable-system \
      --disable-tools --disable-docs --disable-werror --disable-capstone --disable-rust \
      --disable-install-blobs) >"$work/configure.log" 2>&1 \
    || { tail -30 "$work/configure.log" >&2; exit 1; }
  log "building QEMU (${JOBS} jobs; ~10 min on 2 cores)"
  ninja -C "$tree/build" -j "$JOBS" qemu-aarch64 qemu-riscv64 >"$work/build.log" 2>&1 \
    || { grep -E "error" -A3 "$work/build.log" | head -40 >&2; log "full log: $work/build.log"; exit 1; }
  rm -rf "$qemu_out.tmp" && mkdir -p "$qemu_out.tmp/bin" "$qemu_out.tmp/include"
  cp "$tree/build/qemu-aarch64" "$tree/build/qemu-riscv64" "$qemu_out.tmp/bin/"
  strip "$qemu_out.tmp/bin/"*
  cp "$tree/include/qemu/qemu-plugin.h" "$qemu_out.tmp/include/"
  echo "$QEMU_DEB" >"$qemu_out.tmp/VERSION"
  rm -rf "$qemu_out" && mv "$qemu_out.tmp" "$qemu_out" && rm -rf "$work"
  if mkdir -p "$CACHE_DIR" 2>/dev/null; then rm -rf "$qemu_cached" && cp -a "$qemu_out" "$qemu_cached" || true; fi
  log "qemu-plugins $QEMU_DEB built in $((SECONDS - start)) s"
fi

# --------------------------------------------------------------- plugin and runners
NAME=insn-count
BOARD_PRODUCT=lib/libinsn_count.so
# The runners link against the boards' runtimes: a rebuilt board means rebuilt runners.
BOARD_EXTRA="$QEMU_DEB $(cat "$BOARDS_DIR"/{aarch64,riscv64}-emu/.hash 2>/dev/null | tr '\n' ' ')
$(cc --version | head -1) $(aarch64-linux-gnu-g++ --version | head -1) $(riscv64-linux-gnu-g++ --version | head -1)"
if board_cached "$NAME" "$HERE/build_common.sh" "$HERE/build_insn_count.sh" "$HERE/insn_count_plugin.c" \
    "$HERE/count_runner.cc"; then
  exit 0
fi
out="$BOARDS_DIR/$NAME"
rm -rf "$out.tmp" && mkdir -p "$out.tmp/bin" "$out.tmp/lib"
cc -O2 -shared -fPIC -Wall $(pkg-config --cflags glib-2.0) -I"$qemu_out/include" \
  "$HERE/insn_count_plugin.c" -o "$out.tmp/lib/libinsn_count.so"
# tvm-ffi's headers are the same for every architecture: the installed wheel's will do.
declare -A CXX=([aarch64-emu]=aarch64-linux-gnu-g++ [riscv64-emu]=riscv64-linux-gnu-g++)
for board in aarch64-emu riscv64-emu; do
  [[ -f "$BOARDS_DIR/$board/lib/libtvm_runtime.so" ]] || { log "board $board not built (make boards)"; exit 1; }
  log "linking count_runner for $board"
  "${CXX[$board]}" -std=c++17 -O2 -I"$SITE/tvm_ffi/include" "$HERE/count_runner.cc" \
    -o "$out.tmp/bin/count_runner-$board" -L"$BOARDS_DIR/$board/lib" \
    -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -Wl,--as-needed
done
rm -rf "$out" && mv "$out.tmp" "$out"
board_store "$NAME"
