#!/usr/bin/env bash
# The exact commands that made models/mobilenetv2-imagenet-int8.prom (log in models/logs/):
# int8 post-training quantization of torchvision's ImageNet MobileNetV2, calibrated on the
# CC0 / public-domain photos of scikit-image's wheel (128 random crops each), then the check
# against the float model on foolbox's 20 labelled ImageNet photos. About 2 minutes on CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${PROM_TRAIN_VENV:-$HOME/.cache/prom-train-venv}
OUT=${OUT:-runs/imagenet-int8}
mkdir -p "$OUT/calib"
"$VENV/bin/pip" download -q --no-deps scikit-image==0.26.0 -d "$OUT"
"$VENV/bin/python" - "$OUT" <<'PY'
import sys, zipfile, glob
out = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{out}/scikit_image-0.26.0-*.whl")[0])
for name in ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "horse.png",
             "clock_motion.png", "retina.jpg", "rocket.jpg"]:
    with open(f"{out}/calib/{name}", "wb") as f:
        f.write(wheel.read(f"skimage/data/{name}"))
PY
"$VENV/bin/prom-train" ptq --labels models/imagenet.labels --calib "$OUT/calib" \
  --calib-repeats 128 --resolution 224 --batch-size 32 --calibration-batches 32 --out "$OUT"
"$VENV/bin/prom-train" export "$OUT/ptq.pt" -o "$OUT/imagenet-int8.safetensors"
target/release/promctl pack "$OUT/imagenet-int8.safetensors" --labels models/imagenet.labels \
  -o models/mobilenetv2-imagenet-int8.prom
"$VENV/bin/pip" download -q --no-deps foolbox==3.3.4 -d "$OUT"
"$VENV/bin/python" -m zipfile -e "$OUT"/foolbox-3.3.4-*.whl "$OUT/foolbox"
"$VENV/bin/python" -m prom_train.photos --model models/mobilenetv2-imagenet-int8.prom \
  --photos "$OUT/foolbox/foolbox/data" --promctl target/release/promctl
