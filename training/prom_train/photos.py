"""Checks a packed ImageNet model against the float torchvision MobileNetV2 on labelled
photos: both see the same uint8 pixels (each photo centre-cropped and resized once, here,
to the model input, so the engine's own resize is the identity), and the report gives each
one's top-1 and the true class.

    python -m prom_train.photos --model models/mobilenetv2-imagenet-int8.prom \
        --photos DIR [--init STATE_DICT] [--promctl target/release/promctl]

Photos are named `<anything>_<class id>.<ext>` (foolbox's ImageNet samples are).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from PIL import Image

from .cli import default_init
from .model import IMAGENET_MEAN, IMAGENET_STD

NAME = re.compile(r"_(\d+)\.(jpe?g|png)$", re.IGNORECASE)


def square_resize(path: str, side: int) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(img.resize((side, side), Image.BILINEAR, box=box), dtype=np.uint8)


def float_top1(images: list[np.ndarray], init: str) -> list[int]:
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(init, map_location="cpu"))
    model.eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return model((x - mean) / std).argmax(1).tolist()


def engine_top1(promctl: str, model: str, files: list[str]) -> list[int]:
    out = subprocess.run(
        [promctl, "classify", model, *files, "--top", "1", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [json.loads(line)["top"][0]["class"] for line in out.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="prom-photos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--photos", required=True)
    ap.add_argument("--init", default=None, help="float state dict (default: ImageNet weights)")
    ap.add_argument("--promctl", default="promctl")
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--prefix", default="imagenet_", help="only photos whose name starts so")
    args = ap.parse_args(argv)
    init = args.init or default_init()
    if not init:
        print("prom-photos: no float weights (--init)", file=sys.stderr)
        return 2
    photos = sorted(
        p for p in os.listdir(args.photos) if NAME.search(p) and p.startswith(args.prefix)
    )
    if not photos:
        print(f"prom-photos: no <name>_<class>.jpg photos in {args.photos}", file=sys.stderr)
        return 2
    truth = [int(NAME.search(p).group(1)) for p in photos]  # type: ignore[union-attr]
    images = [square_resize(os.path.join(args.photos, p), args.side) for p in photos]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for p, img in zip(photos, images):
            f = os.path.join(tmp, os.path.splitext(p)[0] + ".png")
            Image.fromarray(img).save(f)
            files.append(f)
        engine = engine_top1(args.promctl, args.model, files)
    floats = float_top1(images, init)
    rows = [
        {"photo": p, "true": t, "float": f, "engine": e}
        for p, t, f, e in zip(photos, truth, floats, engine)
    ]
    report = {
        "photos": len(rows),
        "engine_equals_float": sum(r["float"] == r["engine"] for r in rows),
        "float_correct": sum(r["float"] == r["true"] for r in rows),
        "engine_correct": sum(r["engine"] == r["true"] for r in rows),
        "rows": rows,
    }
    print(json.dumps(report, indent=1))
    return 0 if report["engine_equals_float"] == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
