#!/usr/bin/env bash
# scripts/demo.sh: THE run command of prom-daemon (README). Installs the few system packages
# the build and the demo need when missing (scripts/install-prereqs.sh --demo), builds
# prom-daemon and promctl, and runs `promctl demo`: a private D-Bus, the daemon with its
# embedded trained model (Fashion-MNIST, PROM ternary) and a file camera playing 40 bundled
# test images; each image classified over D-Bus with its predicted and true label, the
# accuracy, and the camera's Classified signals. No camera, no system bus and no model file
# needed. Arguments go to `promctl demo` (e.g. --frames 50, --json, or
# --model models/mobilenetv2-imagenet-int8.prom --images models/demo/photos).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-prereqs.sh --demo
cargo build --release -p prom-daemon --bins
exec target/release/promctl demo "$@"
