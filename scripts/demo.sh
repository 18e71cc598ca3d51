#!/usr/bin/env bash
# scripts/demo.sh: THE run command of prom-daemon (README). Installs the few system packages
# the build and the demo need when missing (scripts/install-prereqs.sh --demo), builds
# prom-daemon and promctl, and runs `promctl demo`: a private D-Bus, the daemon with its
# embedded model and the test-pattern camera, and the classifications received over D-Bus.
# No camera, no system bus and no model file needed. Arguments go to `promctl demo`
# (e.g. --frames 50, --json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-prereqs.sh --demo
cargo build --release -p prom-daemon --bins
exec target/release/promctl demo "$@"
