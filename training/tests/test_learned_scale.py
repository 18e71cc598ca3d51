"""`--ternary-rule twn-learned-scale`: a per-channel ternary scale trained by gradient."""

from __future__ import annotations

import torch
from test_float_twin import trained_like_model

from prom_train.model import PromMobileNetV2


def _model(rule: str, seed: int = 0) -> PromMobileNetV2:
    torch.manual_seed(seed)
    model = PromMobileNetV2(width=0.35, classes=10, resolution=32)
    model.set_ternary_rule(rule)
    return model


def test_the_learned_scale_starts_as_twn_and_then_trains():
    images = torch.randint(0, 256, (8, 3, 32, 32)).float()
    # Live activations: batch norm and ranges estimated for the ternary weights.
    twn = trained_like_model(32)
    twn.set_quantized(True)
    twn.recalibrate_batch_norm([images])
    twn.set_observing(True)
    with torch.no_grad():
        twn(images)
    twn.set_observing(False)
    learned = trained_like_model(32)
    learned.set_ternary_rule("twn-learned-scale")
    learned.set_quantized(True)
    learned.load_state_dict(twn.state_dict())
    learned.set_observing(False)
    learned.init_ternary_scales()
    # Same weights: TWN's quantized weights and scales until the scales train (up to float
    # rounding: the scale is kept relative to the batch norm's gain).
    for a, b in zip(twn.pointwise_layers(), learned.pointwise_layers()):
        (wa, sa), (wb, sb) = a.quantized_weights(a.folded()[0]), b.quantized_weights(b.folded()[0])
        assert torch.allclose(sa, sb, rtol=1e-6, atol=0) and torch.allclose(wa, wb, rtol=1e-6)
    scales = [layer.ternary_scale for layer in learned.pointwise_layers()]
    before = [p.detach().clone() for p in scales]
    assert all(torch.isfinite(b).all() for b in before)
    logits = learned(images).detach()
    opt = torch.optim.AdamW(learned.parameters(), lr=1e-2, weight_decay=0.0)
    torch.nn.functional.cross_entropy(learned(images), torch.arange(8) % 10).backward()
    # Channels whose scale sits at the contract's cap get no gradient (this random network
    # has many); the others do.
    trained = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in scales]
    assert sum(trained) >= 5, trained
    opt.step()
    for p, b, t in zip(scales, before, trained):
        assert torch.equal(p.detach(), b) != t
    assert not torch.equal(learned(images).detach(), logits)


def test_checkpoints_of_either_rule_load():
    twn = _model("twn")
    learned = _model("twn-learned-scale", seed=1)
    # A TWN checkpoint: the scales are missing from it and start from TWN's fit.
    learned.load_state_dict(twn.state_dict())
    assert not any(layer.scale_ready for layer in learned.pointwise_layers())
    learned.init_ternary_scales()
    assert all(layer.scale_ready for layer in learned.pointwise_layers())
    # A learned-scale checkpoint keeps its trained scales.
    state = learned.state_dict()
    key = next(k for k in state if k.endswith("ternary_scale"))
    state[key] = state[key] * 1.5
    again = _model("twn-learned-scale", seed=2)
    again.load_state_dict(state)
    assert torch.equal(again.state_dict()[key], state[key])
    assert all(layer.scale_ready for layer in again.pointwise_layers())
