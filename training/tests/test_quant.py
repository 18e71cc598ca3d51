"""The fake quantizers against the contract's integer rules (docs/FORMAT.md)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from prom_train import quant


def test_round_half_up_is_the_contracts_rounding():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.49, 2.5])
    assert quant.round_half_up(x).tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0, 2.0, 3.0]


def test_fake_quant_affine_matches_the_integer_formula_and_gates_gradients():
    scale, zp = 0.05, -7
    x = torch.linspace(-9.0, 9.0, 721, dtype=torch.float64, requires_grad=True)
    y = quant.fake_quant_affine(x, scale, zp)
    for v, out in zip(x.tolist(), y.tolist()):
        q = min(max(math.floor(v / scale + 0.5) + zp, -128), 127)
        assert abs(out - (q - zp) * scale) < 1e-5
    y.sum().backward()
    lo, hi = (-128 - zp) * scale, (127 - zp) * scale
    inside = (x > lo + scale) & (x < hi - scale)
    outside = (x < lo - scale) | (x > hi + scale)
    assert torch.all(x.grad[inside] == 1.0) and torch.all(x.grad[outside] == 0.0)


def test_relu6_uses_the_fixed_scale():
    y = quant.fake_quant_relu6(torch.tensor([-1.0, 0.0, 3.0, 6.0, 7.0]))
    assert torch.allclose(y, torch.tensor([0.0, 0.0, 128 * 6 / 255, 6.0, 6.0]), atol=1e-6)


def test_ternary_threshold_and_scale_follow_twn():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.02], [0.0, 0.0, 0.0, 0.0]])
    trits, alpha = quant.ternary_codes(w)
    # row 0: mean |w| = 0.38, threshold 0.266: -0.9 and 0.5 kept, alpha = 0.7
    assert trits[0].tolist() == [0.0, -1.0, 1.0, 0.0]
    assert abs(float(alpha[0]) - 0.7) < 1e-6
    assert trits[1].tolist() == [0.0] * 4 and abs(float(alpha[1]) - quant.MIN_SCALE) < 1e-12
    wq, _ = quant.fake_quant_ternary_weight(w.clone().requires_grad_(True))
    assert torch.allclose(wq[0], torch.tensor([0.0, -0.7, 0.7, 0.0]))


def test_l2_ternary_rule_is_the_exact_optimum():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, 8, generator=g) * torch.rand(12, 1, generator=g)
    w[3] = 0.0
    trits, alpha = quant.ternary_codes(w, "l2")
    twn_trits, twn_alpha = quant.ternary_codes(w, "twn")
    for r in range(len(w)):
        err = float(((w[r] - trits[r] * alpha[r]) ** 2).sum())
        best = float((w[r] ** 2).sum())  # all zero
        for mask in itertools.product([0.0, 1.0], repeat=w.shape[1]):
            m = torch.tensor(mask)
            if m.sum() > 0:
                a = (w[r].abs() * m).sum() / m.sum()
                best = min(best, float(((w[r] - torch.sign(w[r]) * m * a) ** 2).sum()))
        assert err <= best + 1e-6, (r, err, best)
        assert err <= float(((w[r] - twn_trits[r] * twn_alpha[r]) ** 2).sum()) + 1e-6
    assert trits[3].abs().sum() == 0
    with pytest.raises(ValueError, match="ternary rule"):
        quant.ternary_codes(w, "median")


def test_small_image_augmentation_shifts_and_flips_exactly():
    from prom_train.data import augment_small

    images = torch.randint(1, 256, (32, 1, 32, 32), dtype=torch.uint8)
    out = augment_small(images, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(len(images)):
        candidates = [
            c
            for dy in range(5)
            for dx in range(5)
            for c in (padded[i, :, dy : dy + 32, dx : dx + 32],)
            for c in (c, c.flip(-1))
        ]
        assert any(torch.equal(out[i], c) for c in candidates)
    assert not torch.equal(out, images)


def test_int8_weights_are_symmetric_per_channel():
    w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.01, -0.3]])
    wq, scale = quant.fake_quant_int8_weight(w)
    assert torch.allclose(scale, torch.tensor([1.0 / 127, 2.0 / 127]))
    q = wq / scale.view(-1, 1)
    assert torch.allclose(q, q.round()) and q.abs().max() <= 127


def test_observer_range_includes_zero():
    obs = quant.RangeObserver()
    obs.observe(torch.tensor([-3.0, 9.0]))
    scale, zp = obs.qparams()
    assert abs(scale - 12.0 / 255) < 1e-7 and zp == round(-128 + 3.0 / scale)
    obs = quant.RangeObserver()
    obs.observe(torch.tensor([2.0, 5.1]))
    scale, zp = obs.qparams()
    assert abs(scale - 5.1 / 255) < 1e-7 and zp == -128


def test_weight_scales_are_capped_for_the_contract():
    w = torch.tensor([[0.9, -0.9, 0.0], [0.05, -0.05, 0.0]])
    wq, alpha = quant.fake_quant_ternary_weight(w, max_scale=0.3)
    assert torch.allclose(alpha, torch.tensor([0.3, 0.05]))
    assert torch.allclose(wq, torch.tensor([[0.3, -0.3, 0.0], [0.05, -0.05, 0.0]]))
    wq, s = quant.fake_quant_int8_weight(torch.tensor([[1.27, 0.5]]), max_scale=0.005)
    assert torch.allclose(s, torch.tensor([0.005])) and torch.allclose(
        wq, torch.tensor([[0.635, 0.5]])
    )


def test_a_trained_ternary_scale_takes_the_task_gradient():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.02], [0.3, 0.3, -0.3, 0.0]], requires_grad=True)
    scale = torch.tensor([0.5, 0.2], requires_grad=True)
    wq, alpha = quant.fake_quant_ternary_weight(w, None, "twn-learned-scale", scale)
    # TWN's trits, times the given scale.
    trits, _ = quant.ternary_codes(w, "twn")
    assert torch.equal(wq.detach(), trits * scale.detach().view(-1, 1))
    assert torch.equal(alpha.detach(), scale.detach())
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 2.0, 7.0]])
    (wq * g).sum().backward()
    # The scale's gradient is sum_k g * t; the latent weights' is straight through.
    assert torch.allclose(scale.grad, (g * trits).sum(dim=1))
    assert torch.equal(w.grad, g)
    # The contract's cap still applies.
    wq, alpha = quant.fake_quant_ternary_weight(w, 0.3, "twn-learned-scale", scale)
    assert alpha.tolist() == pytest.approx([0.3, 0.2])
