#!/usr/bin/env bash
# Fetch Debian's qemu-user 10 (bookworm-backports; statically linked) into build/boards/qemu/bin.
# Why: Debian 12's qemu-user 7.2 aborts translating RVV code that TVM emits
#   (qemu-riscv64: target/riscv/translate.c: decode_save_opc: Assertion `ctx->insn_start != NULL'
#   on vfncvt.rtz.x.f.w, the float->int narrowing of every quantize; fixed in QEMU 8).
# How: apt-get with a private configuration (its own sources list, lists and cache under
#   build/boards/qemu.apt): the system's apt sources and installed packages are not touched,
#   nothing is installed; the two emulators are unpacked from the .deb with dpkg-deb.
# The emulated boards prefer build/boards/qemu/bin/qemu-* and fall back to the system's
# qemu-user (fine for aarch64-emu; riscv64-emu needs QEMU >= 8).
source "$(dirname "${BASH_SOURCE[0]}")/build_common.sh"
SUITE="${QEMU_SUITE:-bookworm-backports}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
out="$BOARDS_DIR/qemu"
if [[ -x "$out/bin/qemu-riscv64" && -x "$out/bin/qemu-aarch64" && -f "$out/VERSION" ]]; then
  log "qemu up to date ($("$out/bin/qemu-riscv64" --version | head -1))"
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || { log "not a Debian system: install qemu-user >= 8 (qemu-riscv64, qemu-aarch64) and put it on PATH"; exit 1; }

apt="$BOARDS_DIR/qemu.apt"
rm -rf "$apt" && mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/deb"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $MIRROR $SUITE main" >"$apt/sources.list"
APTO=(-o Dir::Etc::sourcelist="$apt/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$apt/lists"
      -o Dir::Cache="$apt/cache" -o Debug::NoLocking=true -o APT::Sandbox::User="$(id -un)")
log "fetching the qemu-user package index of $SUITE"
apt-get "${APTO[@]}" -qq update >"$apt/update.log" 2>&1 || true
# The version the suite has (madison reads only the configured sources, not what is installed).
version="$(apt-cache "${APTO[@]}" madison qemu-user 2>/dev/null | awk -F'|' 'NR==1 {gsub(/ /, "", $2); print $2}')"
if [[ -z "$version" ]]; then
  # Offline: an earlier download in the user cache will do.
  # (qemu-<Debian version>, which starts with its epoch digit; not qemu-plugins-*)
  cached="$(ls -d "$CACHE_DIR"/qemu-[0-9]* 2>/dev/null | sort -V | tail -1 || true)"
  if [[ -n "$cached" && -x "$cached/bin/qemu-riscv64" && -x "$cached/bin/qemu-aarch64" ]]; then
    # bin/ and VERSION (build_insn_count.sh builds the same QEMU version with plugins)
    rm -rf "$out" && cp -a "$cached" "$out" && rm -rf "$apt"
    log "package index of $SUITE unreachable; reusing $cached"
    exit 0
  fi
  cat "$apt/update.log" >&2
  log "cannot reach $MIRROR $SUITE for qemu-user"
  exit 1
fi
cached="$CACHE_DIR/qemu-$version"
if [[ -x "$cached/bin/qemu-riscv64" && -x "$cached/bin/qemu-aarch64" ]]; then
  rm -rf "$out" && cp -a "$cached" "$out"
  log "qemu $version reused from $cached"
  rm -rf "$apt"
  exit 0
fi
log "downloading qemu-user $version (~60 MB)"
(cd "$apt/deb" && apt-get "${APTO[@]}" -qq download "qemu-user=$version" >"$apt/download.log" 2>&1) \
  || { cat "$apt/download.log" >&2; exit 1; }
deb="$(ls "$apt"/deb/qemu-user_*.deb)"
rm -rf "$apt/x" && dpkg-deb -x "$deb" "$apt/x"
rm -rf "$out.tmp" && mkdir -p "$out.tmp/bin"
for q in qemu-aarch64 qemu-riscv64; do cp "$apt/x/usr/bin/$q" "$out.tmp/bin/$q"; done
"$out.tmp/bin/qemu-riscv64" --version | head -1 >"$out.tmp/VERSION"
rm -rf "$out" && mv "$out.tmp" "$out" && rm -rf "$apt"
if mkdir -p "$CACHE_DIR" 2>/dev/null; then rm -rf "$cached" && cp -a "$out" "$cached" || true; fi
log "qemu: $(cat "$out/VERSION") in $out/bin"
