"""The float twin and the folded (quantized-mode) network compute the same function when the
quantizers are switched off: otherwise the gap between them is not a quantization error."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision

from prom_train import quant
from prom_train.model import IMAGENET_MEAN, IMAGENET_STD, PromMobileNetV2


def trained_like_model(resolution: int = 64) -> PromMobileNetV2:
    """Random weights, with batch-norm statistics estimated on random images (as a trained
    network has them: activations neither dead nor saturated)."""
    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v2(num_classes=10).state_dict()
    model = PromMobileNetV2(1.0, 10, resolution, init_state=state)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randint(0, 256, (8, 3, resolution, resolution)).float())
    return model.eval()


def test_stem_normalises_the_image_as_torchvision_expects():
    """The stem sees `(u / 255 - mean) / std`, with the border padded by the input zero point
    (the engine pads the uint8 image with it)."""
    model = trained_like_model()
    stem = model.features[0]
    u = torch.randint(0, 256, (2, 3, 64, 64)).float()
    x = (u - stem.zero_point) / 255.0
    padded = F.pad(u, (1, 1, 1, 1), value=float(stem.zero_point))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (padded / 255.0 - mean) / std
    expected = torch.clamp(stem.bn(F.conv2d(normalised, stem.conv.weight, None, 2, 0)), 0, 6)
    with torch.no_grad():
        got = stem.float_forward(x)
    assert torch.allclose(got, expected, atol=1e-5)


def test_folded_network_without_quantizers_equals_the_float_twin(monkeypatch):
    model = trained_like_model()
    u = torch.randint(0, 256, (4, 3, 64, 64)).float()
    with torch.no_grad():
        float_logits = model(u)
        identity_weights = lambda w, max_scale=None: (w, quant.int8_weight_scale(w))  # noqa: E731
        monkeypatch.setattr(quant, "fake_quant_affine", lambda x, s, z: x)
        monkeypatch.setattr(quant, "fake_quant_relu6", lambda x: torch.clamp(x, 0.0, 6.0))
        monkeypatch.setattr(quant, "fake_quant_int8_weight", identity_weights)
        monkeypatch.setattr(quant, "fake_quant_bias", lambda b, s: b)
        monkeypatch.setattr(quant, "engine_scale_factors", torch.ones_like)
        monkeypatch.setattr(quant, "add_factors", lambda a, b, o: (1.0, 1.0))
        monkeypatch.setattr(quant, "round_half_up", lambda x: x)  # the classifier's weights
        model.set_pointwise_precision(["int8"] * len(model.pointwise_layers()))
        model.set_quantized(True)
        model.set_observing(True)
        folded_logits = model(u)
    scale = float(float_logits.abs().max())
    assert scale > 0.1
    assert torch.allclose(folded_logits, float_logits, atol=1e-4 * scale, rtol=0)
