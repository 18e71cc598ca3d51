#!/usr/bin/env bash
# Installs what the test suite (scripts/test.sh) needs on a fresh Debian 12 machine, only
# when it is missing, so a second run is a quick no-op:
#   - gcc-aarch64-linux-gnu + libc6-dev-arm64-cross: linker and libc for aarch64 tests;
#   - binutils-aarch64-linux-gnu, binutils: objdump/readelf for scripts/check-add-only.sh;
#   - qemu-user: qemu-aarch64 / qemu-arm run the cross-built tests (.cargo/config.toml);
#   - gcc-arm-linux-gnueabihf + libc6-dev-armhf-cross: optional armv7 tests (skipped, loudly,
#     by scripts/test.sh when they cannot be installed);
#   - dbus: dbus-daemon for the D-Bus integration tests and `promctl demo`;
#   - systemd (systemd-analyze, busctl), util-linux (setpriv), procps (kill): the unit,
#     bus-policy and end-to-end daemon tests;
#   - mosquitto, mosquitto-clients: the MQTT broker and mosquitto_sub for prom-bridge's
#     tests (the broker is started by the tests on a loopback port; the package's own
#     service is not used); curl and prometheus (promtool) for its /metrics test; openssl
#     for the certificates of its TLS test;
#   - libclang-dev: libclang (and clang's headers) for bindgen, which the `v4l` crate's
#     v4l2-sys-mit dependency runs at build time to generate the V4L2 bindings;
#   - rustup targets aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf and the
#     clippy and rustfmt components;
#   - cargo-deb (cargo install --locked, into ~/.cargo/bin): builds the Debian packages
#     (scripts/package.sh).
# apt-get runs directly as root, through sudo otherwise. Rust itself (rustup + cargo) must
# already be installed (https://rustup.rs); this script does not download installers.
# With --demo, only what building and running `promctl demo` needs (README's run command):
# libclang-dev, dbus, procps; no cross toolchains, emulators or extra Rust targets.
set -euo pipefail

mode=test
[ "${1-}" != --demo ] || mode=demo

log() { echo "install-prereqs: $*" >&2; }

need_apt=()
want() { local p; for p in "$@"; do [[ " ${need_apt[*]-} " == *" $p "* ]] || need_apt+=("$p"); done; }

if [ "$mode" = test ]; then
command -v aarch64-linux-gnu-gcc >/dev/null || want gcc-aarch64-linux-gnu
[ -e /usr/aarch64-linux-gnu/lib/libc.so ] || [ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] \
  || want libc6-dev-arm64-cross
[ -e /usr/aarch64-linux-gnu/include/stdio.h ] || want libc6-dev-arm64-cross
command -v aarch64-linux-gnu-objdump >/dev/null || want binutils-aarch64-linux-gnu
command -v qemu-aarch64 >/dev/null || want qemu-user
command -v qemu-arm >/dev/null || want qemu-user
command -v objdump >/dev/null || want binutils
command -v readelf >/dev/null || want binutils
command -v arm-linux-gnueabihf-gcc >/dev/null || want gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
[ -e /usr/arm-linux-gnueabihf/include/stdio.h ] || want libc6-dev-armhf-cross
command -v systemd-analyze >/dev/null || want systemd
command -v busctl >/dev/null || want systemd
command -v setpriv >/dev/null || want util-linux
# The static aarch64 cycle model (benches/mca/aarch64_model.py): llvm-mca, -objdump, -nm.
command -v llvm-mca-19 >/dev/null || want llvm-19
# prom-bridge's tests: a real MQTT broker on a loopback port and its subscriber client.
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || want mosquitto
command -v mosquitto_sub >/dev/null || want mosquitto-clients
# prom-bridge's /metrics test: curl scrapes it, promtool (Debian's prometheus) checks it.
command -v curl >/dev/null || want curl
command -v promtool >/dev/null || want prometheus
# ... and openssl makes the CA and broker certificate of its TLS test.
command -v openssl >/dev/null || want openssl
fi
command -v dbus-daemon >/dev/null || want dbus
command -v kill >/dev/null || want procps
# The package test (scripts/test-packaging.sh): clean Debian systems, one of them booted.
command -v mmdebstrap >/dev/null || want mmdebstrap
command -v systemd-nspawn >/dev/null || want systemd-container
command -v lintian >/dev/null || want lintian
command -v apt-ftparchive >/dev/null || want apt-utils
command -v gpg >/dev/null || want gnupg
command -v dpkg-shlibdeps >/dev/null || want dpkg-dev
# LIBCLANG_PATH points bindgen at a libclang elsewhere (clang-sys honours it).
[ -n "${LIBCLANG_PATH-}" ] || compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null \
  || want libclang-dev

optional_apt=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)

if [ ${#need_apt[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || {
    log "missing: ${need_apt[*]}; no apt-get here: install the equivalents by hand"
    exit 1
  }
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { log "need root or sudo to apt-get install ${need_apt[*]}"; exit 1; }
    as_root=(sudo)
  fi
  apt() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Use-Pty=0 "$@"; }
  log "apt-get install ${need_apt[*]}"
  apt update
  if ! apt install --no-install-recommends "${need_apt[@]}"; then
    # The armv7 cross toolchain is optional (scripts/test.sh skips armv7 loudly without it).
    required=()
    for p in "${need_apt[@]}"; do
      [[ " ${optional_apt[*]} " == *" $p "* ]] || required+=("$p")
    done
    log "retrying without the optional armv7 toolchain: ${required[*]-}"
    [ ${#required[@]} -eq 0 ] || apt install --no-install-recommends "${required[@]}"
  fi
else
  log "system packages: all present"
fi

if ! command -v cargo >/dev/null; then
  log "cargo not found: install Rust with rustup (https://rustup.rs) first"
  exit 1
fi
if [ "$mode" = demo ]; then
  log "ready (demo)"
  exit 0
fi
if command -v rustup >/dev/null; then
  installed_targets=$(rustup target list --installed)
  for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    grep -qx "$t" <<<"$installed_targets" || { log "rustup target add $t"; rustup target add "$t"; }
  done
  installed_components=$(rustup component list --installed)
  for c in clippy rustfmt; do
    grep -q "^$c" <<<"$installed_components" || { log "rustup component add $c"; rustup component add "$c"; }
  done
else
  # A distribution Rust without rustup: the targets' standard libraries must already exist.
  for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    libdir=$(rustc --print target-libdir --target "$t" 2>/dev/null || true)
    if ! ls "$libdir"/libstd-*.rlib >/dev/null 2>&1; then
      log "no rustup and no Rust standard library for $t; install rustup (https://rustup.rs)"
      [ "$t" != aarch64-unknown-linux-gnu ] || exit 1
    fi
  done
fi
# The Debian packages (scripts/package.sh, docs/PACKAGING.md).
if ! command -v cargo-deb >/dev/null; then
  log "cargo install --locked cargo-deb"
  cargo install --locked cargo-deb
fi
log "ready"
