"""How hard the contract's requantization range (scale below 0.5, docs/FORMAT.md) caps the
ternary scales of a QAT checkpoint: per pointwise layer, the channels whose TWN scale
exceeds the cap, and the median and largest ratio of scale to cap.

usage: python models/ternary-scale-cap.py QAT_CHECKPOINT   (prom-train installed)
"""

import sys

import torch
from prom_train import cli, quant
from prom_train import model as prom_model

records = []
plain = quant.fake_quant_ternary_weight


def recording(w, max_scale=None, rule="twn"):
    """The quantizer as the model calls it, noting the uncapped scale and the cap."""
    _, alpha = quant.ternary_codes(w, rule)
    if max_scale is not None:
        records.append((tuple(w.shape), alpha.detach(), float(max_scale)))
    return plain(w, max_scale, rule)


prom_model.quant.fake_quant_ternary_weight = recording
model = cli.model_from_checkpoint(cli.load_checkpoint(sys.argv[1])).eval()
with torch.no_grad():
    model(torch.rand(1, 3, model.resolution, model.resolution))
total = 0
for i, (shape, alpha, cap) in enumerate(records):
    ratio = alpha / cap
    capped = int((ratio > 1).sum())
    total += capped
    print(
        f"{i:2d} {shape[1]:4d}->{shape[0]:4d} capped {capped:5d}/{len(ratio):5d}  "
        f"scale/cap median {float(ratio.median()):.2f} max {float(ratio.max()):.2f}"
    )
print(f"capped channels: {total} of {sum(len(a) for _, a, _ in records)}")
