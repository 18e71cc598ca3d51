"""The model family: any width in 0.35..1.4, input 32..224, any class count exports and packs
into a model the engine validates, with the expected shapes; invalid settings are refused."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from prom_train import promsim
from prom_train.export import export_interchange
from prom_train.model import PromMobileNetV2


@pytest.mark.parametrize(
    ("width", "resolution", "classes", "precision"),
    [(0.35, 64, 3, "int8"), (0.35, 64, 3, "ternary"), (1.4, 96, 7, "ternary")],
)
def test_family_member_packs(width, resolution, classes, precision, promctl, tmp_path):
    """Untrained ternary layers have large scales (alpha about 0.6), which the contract's
    requantization range (below 0.5) cannot take at some layers: the capped scales make
    every member pack all the same."""
    torch.manual_seed(0)
    model = PromMobileNetV2(width=width, classes=classes, resolution=resolution).eval()
    model.set_pointwise_precision([precision] * len(model.pointwise_layers()))
    model.set_quantized(True)
    model.set_observing(True)
    with torch.no_grad():
        model(torch.randint(0, 256, (4, 3, resolution, resolution)).float())
    model.set_observing(False)
    interchange = tmp_path / "m.safetensors"
    export_interchange(model, str(interchange))
    labels = tmp_path / "m.labels"
    labels.write_text("".join(f"class {i}\n" for i in range(classes)))
    out = tmp_path / "m.prom"
    subprocess.run(
        [promctl, "pack", str(interchange), "--labels", str(labels), "-o", str(out)], check=True
    )
    info = json.loads(
        subprocess.run(
            [promctl, "inspect", str(out), "--json"], check=True, capture_output=True, text=True
        ).stdout
    )
    assert info["metadata"]["width_multiplier"] == pytest.approx(width)
    assert info["metadata"]["input_height"] == resolution
    assert info["metadata"]["classes"] == classes
    layers = info["layers"]
    assert layers[0]["output"][2] == model.features[0].conv.out_channels
    assert layers[-1]["output"] == [1, 1, classes]
    # The simulator reads it and produces one logit per class.
    sim = promsim.run(
        promsim.PromModel(out.read_bytes()),
        np.zeros((1, resolution, resolution, 3), np.uint8),
    )
    assert sim.shape == (1, classes)


def test_out_of_family_settings_are_refused():
    with pytest.raises(ValueError, match="width"):
        PromMobileNetV2(width=2.0, classes=3, resolution=64)
    with pytest.raises(ValueError, match="resolution"):
        PromMobileNetV2(width=1.0, classes=3, resolution=16)
