"""The models shipped in models/: the engine equals the independent simulator bit for bit on
the Fashion-MNIST PROM model, which classifies real test images (it is trained), and the
int8 ImageNet model's top-1 equals the float torchvision model's on the labelled photos."""

from __future__ import annotations

import json
import subprocess

import numpy as np
from conftest import REPO

from prom_train import photos, promsim

FASHION_MODEL = REPO / "models" / "fashion-mnist-prom.prom"
IMAGENET_MODEL = REPO / "models" / "mobilenetv2-imagenet-int8.prom"
IMAGES = 500


def test_fashion_model_is_bit_exact_with_the_simulator_and_trained(promctl, fashion_dir, tmp_path):
    logits = tmp_path / "engine.bin"
    out = subprocess.run(
        [
            promctl,
            "eval",
            str(FASHION_MODEL),
            fashion_dir,
            "--limit",
            str(IMAGES),
            "--json",
            "--logits",
            str(logits),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    report = json.loads(out)
    engine = np.fromfile(logits, dtype="<i4").reshape(IMAGES, 10)
    model = promsim.PromModel(FASHION_MODEL.read_bytes())
    # Every pointwise layer of the shipped PROM model is ternary (op kind 3).
    kinds = [op.kind for op in model.ops]
    assert kinds.count(promsim.OP_PW_TERNARY) == 34 and promsim.OP_PW_INT8 not in kinds
    images, labels = promsim.load_idx_inputs(fashion_dir, 32, IMAGES)
    sim = promsim.run(model, images)
    assert np.array_equal(sim, engine), f"{int((sim != engine).any(1).sum())} images differ"
    top1 = float((sim.argmax(1) == labels).mean() * 100)
    assert abs(top1 - report["top1"]) < 1e-9
    assert top1 >= 88.0, report


def test_imagenet_model_top1_equals_float_on_labelled_photos(promctl, photos_dir, capsys):
    code = photos.main(
        ["--model", str(IMAGENET_MODEL), "--photos", photos_dir, "--promctl", promctl]
    )
    report = json.loads(capsys.readouterr().out)
    assert report["photos"] == 20
    assert report["engine_equals_float"] == 20, report
    assert code == 0
