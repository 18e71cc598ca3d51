"""Writes the demo images `promctl demo` bundles: the first `per_class` Fashion-MNIST test
images of every class, centred on the 32x32 black canvas the model reads (exactly what
training and `promctl eval` feed it), as greyscale PNGs named `t10k-<index>_<class>.png`.

    python -m prom_train.demo_images OUT_DIR [--per-class 4]
"""

from __future__ import annotations

import argparse
import os

from PIL import Image

from .data import FASHION_MNIST_DIR, _idx_path, fashion_mnist_canvas, read_idx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="prom-demo-images")
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--data-dir", default=FASHION_MNIST_DIR)
    args = ap.parse_args(argv)
    images = read_idx(_idx_path(args.data_dir, "t10k-images-idx3-ubyte"))
    labels = read_idx(_idx_path(args.data_dir, "t10k-labels-idx1-ubyte"))
    canvas = fashion_mnist_canvas(images)
    taken: dict[int, int] = {}
    os.makedirs(args.out, exist_ok=True)
    for i, label in enumerate(labels.tolist()):
        if taken.get(label, 0) >= args.per_class:
            continue
        taken[label] = taken.get(label, 0) + 1
        Image.fromarray(canvas[i]).save(os.path.join(args.out, f"t10k-{i:05d}_{label}.png"))
        if len(taken) == 10 and all(v >= args.per_class for v in taken.values()):
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
