#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, only when it is missing:
# the aarch64 (and, when Debian has it, armv7) Rust targets, the cross linkers and libcs,
# qemu-user to run the cross-built tests, and binutils for the add-only disassembly check.
set -euo pipefail

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v aarch64-linux-gnu-objdump >/dev/null || need_apt+=(binutils-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v objdump >/dev/null || need_apt+=(binutils)
command -v arm-linux-gnueabihf-gcc >/dev/null || need_apt+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v dbus-daemon >/dev/null || need_apt+=(dbus)

if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "install-prereqs: apt-get install ${need_apt[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  # armv7 cross tools are optional (the armv7 tests are skipped, loudly, without them).
  if ! DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}"; then
    echo "install-prereqs: retrying without the optional armv7 toolchain" >&2
    filtered=()
    for p in "${need_apt[@]}"; do
      case "$p" in gcc-arm-linux-gnueabihf|libc6-dev-armhf-cross) ;; *) filtered+=("$p") ;; esac
    done
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${filtered[@]}"
  fi
fi

installed_targets=$(rustup target list --installed)
for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
for c in clippy rustfmt; do
  rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done
