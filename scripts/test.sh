#!/usr/bin/env bash
# scripts/test.sh: THE test command of prom-daemon (README; .ci/run calls it).
#
# Steps, each under a "==== [n] ..." header, with a timed summary at the end:
#    1. scripts/install-prereqs.sh: installs what is missing on a fresh Debian 12 machine
#       (cross gcc + libc, qemu-user, binutils-aarch64-linux-gnu, rustup targets, clippy,
#       rustfmt); a no-op when everything is there;
#    2. cargo fmt --all --check
#    3. cargo clippy --workspace --all-targets -- -D warnings
#    4. cargo clippy -p prom-kernels --all-targets --target aarch64-unknown-linux-gnu -- -D warnings
#    5. cargo test --workspace --release (release: the bit-exact tests run full MobileNetV2 shapes)
#    6. scripts/check-add-only.sh: no multiply in the ternary (add-only) kernels, x86_64 + aarch64
#    7. scripts/test-training.sh: the Python toolkit (installs Debian's PyTorch, Fashion-MNIST
#       and a cached venv when missing): ruff, then pytest (quantizers, a training smoke test
#       through pack/eval with the numpy simulator bit-exact, DDP with 2 processes, the
#       shipped models);
#    8. scripts/test-dbus-examples.py (with that venv's Python: jeepney, dbus-fast): every
#       shell and Python example of docs/DBUS.md against a live daemon on a private bus;
#    9. aarch64 kernel tests under qemu-aarch64 with QEMU_CPU=cortex-a72 (Raspberry Pi 4),
#       PROM_TEST_EMULATED=1, then `tier_really_ran -- --nocapture`, which must print
#       `tier-check: neon ran` (proof that the NEON tier, not scalar, was tested);
#   10. the same with QEMU_CPU=cortex-a76 (Raspberry Pi 5);
#   11. armv7-unknown-linux-gnueabihf kernel tests under qemu-arm (scalar tier), or a
#       SKIPPED line when arm-linux-gnueabihf-gcc is not available;
#   12. scripts/test-packaging.sh: the amd64 and arm64 .debs and the signed apt repository
#       (scripts/package.sh, lintian clean), the installed unit (systemd-analyze verify and
#       security), `apt-get install` into a clean Debian 12 chroot (mmdebstrap tarball
#       cached in ~/.cache/prom-packaging) with the daemon run there as user prom on a
#       system bus with the installed policy, upgrade, purge; arm64 binaries under qemu;
#   13. benches/mca/aarch64_model.py: the static A72/A76 cycle model on the release aarch64
#       build of promctl and MobileNetV2-1.0-224 (`promctl synth`); it stops with an error
#       when the kernel code it expects (loops, constants, symbols) is no longer there.
# A failing step does not stop the later ones (set PROM_TEST_FAIL_FAST=1 to stop at the first
# failure); the exit status is non-zero if any step failed. A failing prerequisite step
# stops everything.
#
# Environment:
#   PROM_TEST_SKIP_CROSS=1   skip steps 9-13 (the emulated runs, packages, cycle model) for a
#                            quick local check;
#                            the default is to run everything.
#   PROM_TEST_FAIL_FAST=1    stop at the first failing step.
#   CARGO_TERM_COLOR         default: always on a terminal or GitHub Actions, never otherwise.
#   CARGO_INCREMENTAL        default 0 when CI is set (incremental caches cost time in CI).
# All cargo builds share target/ (host release artifacts in target/release, cross ones in
# target/<triple>/release), so the release builds of steps 5-9 reuse dependencies.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${CARGO_TERM_COLOR:-}" ]; then
  if [ -t 1 ] || [ -n "${GITHUB_ACTIONS:-}" ]; then CARGO_TERM_COLOR=always; else CARGO_TERM_COLOR=never; fi
fi
export CARGO_TERM_COLOR
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

AARCH64=aarch64-unknown-linux-gnu
ARMV7=armv7-unknown-linux-gnueabihf

step_no=0
summary=()
failed=()
start=$SECONDS
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT

mmss() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

print_summary() {
  local total=$((SECONDS - start)) line
  echo
  echo "==== summary"
  for line in "${summary[@]}"; do echo "  $line"; done
  if [ ${#failed[@]} -eq 0 ]; then
    echo "test.sh: PASSED ($step_no steps, $(mmss "$total"))"
  else
    echo "test.sh: FAILED: ${failed[*]} ($step_no steps, $(mmss "$total"))"
  fi
}

# step NAME COMMAND...: runs one step under a header and records its time and status.
# Note: bash ignores `set -e` inside a function called as `f || ...`, so the multi-command
# step functions below chain their commands with explicit `|| return`.
step() {
  local name=$1 t0=$SECONDS rc=0
  shift
  step_no=$((step_no + 1))
  echo
  echo "==== [$step_no] $name"
  echo "==== \$ $*"
  "$@" || rc=$?
  local dt=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    echo "==== [$step_no] $name: ok ($(mmss "$dt"))"
    summary+=("$(printf '%-4s %7s  %s' ok "$(mmss "$dt")" "$name")")
  else
    echo "==== [$step_no] $name: FAILED with exit status $rc ($(mmss "$dt"))"
    summary+=("$(printf '%-4s %7s  %s' FAIL "$(mmss "$dt")" "$name")")
    failed+=("[$step_no] $name")
    if [ "${PROM_TEST_FAIL_FAST:-0}" = 1 ]; then print_summary; exit 1; fi
  fi
}

skip() {
  local name=$1 why=$2
  step_no=$((step_no + 1))
  echo
  echo "==== [$step_no] $name"
  echo "SKIPPED: $name: $why"
  summary+=("$(printf '%-4s %7s  %s' skip - "$name: $why")")
}

# The static cycle model on the release aarch64 promctl (the package step built it).
cycle_model() {
  cargo build --release -q --target "$AARCH64" -p prom-daemon --bin promctl || return 1
  local m224="$logdir/m224.prom"
  target/release/promctl synth --resolution 224 -o "$m224" >/dev/null || return 1
  python3 benches/mca/aarch64_model.py --model "$m224" --json "$logdir/aarch64-model.json"
}

# aarch64 kernel tests under qemu-aarch64 on one emulated core, then proof that NEON ran.
aarch64_tests() {
  local cpu=$1 log="$logdir/tier-$1.log"
  local cpus
  # (qemu exits 1 after `-cpu help`; and no `| grep -q`: SIGPIPE + pipefail)
  cpus=$(qemu-aarch64 -cpu help 2>&1 || true)
  grep -qw -- "$cpu" <<<"$cpus" \
    || { echo "qemu-aarch64 ($(qemu-aarch64 --version | head -n1)) does not know CPU $cpu"; return 1; }
  PROM_TEST_EMULATED=1 QEMU_CPU=$cpu cargo test -p prom-kernels --release --target "$AARCH64" \
    || return 1
  echo "---- engine vs the naive reference executor, bit for bit (QEMU_CPU=$cpu)"
  PROM_TEST_EMULATED=1 QEMU_CPU=$cpu cargo test -p prom-engine --release --target "$AARCH64" \
    --test reference --test engine || return 1
  echo "---- tier check: tier_really_ran -- --nocapture (QEMU_CPU=$cpu)"
  PROM_TEST_EMULATED=1 QEMU_CPU=$cpu cargo test -p prom-kernels --release --target "$AARCH64" \
    --test bitexact -- tier_really_ran --nocapture 2>&1 | tee "$log" || return 1
  if ! grep -qF 'tier-check: neon ran' "$log"; then
    echo "FAILED: no 'tier-check: neon ran' line: the NEON tier was not proven to run under QEMU_CPU=$cpu"
    return 1
  fi
  echo "---- NEON tier proven under QEMU_CPU=$cpu: $(grep -F 'tier-check: neon ran' "$log" | head -n1)"
}

armv7_tests() {
  PROM_TEST_EMULATED=1 cargo test -p prom-kernels --release --target "$ARMV7"
}

have_rust_target() {
  local libdir
  libdir=$(rustc --print target-libdir --target "$1" 2>/dev/null) || return 1
  compgen -G "$libdir/libstd-*.rlib" >/dev/null
}

echo "test.sh: prom-daemon test suite ($(rustc --version 2>/dev/null || echo 'rustc not yet installed'))"
echo "test.sh: PROM_TEST_SKIP_CROSS=${PROM_TEST_SKIP_CROSS:-0} CARGO_TERM_COLOR=$CARGO_TERM_COLOR CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-unset}"

step "prerequisites" scripts/install-prereqs.sh
if [ ${#failed[@]} -gt 0 ]; then print_summary; exit 1; fi

rustfmt_color=never
[ "$CARGO_TERM_COLOR" != always ] || rustfmt_color=always
step "rustfmt" cargo fmt --all --check -- --color "$rustfmt_color"
step "clippy (host)" cargo clippy --workspace --all-targets -- -D warnings
step "clippy (aarch64, prom-kernels)" \
  cargo clippy -p prom-kernels --all-targets --target "$AARCH64" -- -D warnings
step "tests (host, release)" cargo test --workspace --release
step "add-only check (x86_64, aarch64)" scripts/check-add-only.sh
step "training toolkit (Python)" scripts/test-training.sh
step "D-Bus examples (docs/DBUS.md)" \
  "${PROM_TRAIN_VENV:-$HOME/.cache/prom-train-venv}/bin/python" scripts/test-dbus-examples.py

if [ "${PROM_TEST_SKIP_CROSS:-0}" = 1 ]; then
  skip "aarch64 tests under qemu, cortex-a72" "PROM_TEST_SKIP_CROSS=1"
  skip "aarch64 tests under qemu, cortex-a76" "PROM_TEST_SKIP_CROSS=1"
  skip "armv7 tests under qemu-arm" "PROM_TEST_SKIP_CROSS=1"
  skip "Debian packages (build, lintian, apt install in a clean Debian 12)" "PROM_TEST_SKIP_CROSS=1"
  skip "aarch64 static cycle model (benches/mca)" "PROM_TEST_SKIP_CROSS=1"
else
  step "aarch64 tests under qemu, cortex-a72" aarch64_tests cortex-a72
  step "aarch64 tests under qemu, cortex-a76" aarch64_tests cortex-a76
  if ! command -v arm-linux-gnueabihf-gcc >/dev/null; then
    skip "armv7 tests under qemu-arm" "arm-linux-gnueabihf-gcc not found (apt-get install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)"
  elif ! command -v qemu-arm >/dev/null; then
    skip "armv7 tests under qemu-arm" "qemu-arm not found (apt-get install qemu-user)"
  elif ! have_rust_target "$ARMV7"; then
    skip "armv7 tests under qemu-arm" "Rust target $ARMV7 not installed (rustup target add $ARMV7)"
  else
    step "armv7 tests under qemu-arm (scalar tier)" armv7_tests
  fi
  step "Debian packages (build, lintian, apt install in a clean Debian 12)" \
    scripts/test-packaging.sh
  step "aarch64 static cycle model (benches/mca)" cycle_model
fi

print_summary
[ ${#failed[@]} -eq 0 ]
