"""Fake quantizers mirroring the PROM-Q numeric contract (docs/FORMAT.md).

Every quantizer returns values on the grid the engine uses, in float, with straight-through
gradients: the forward pass is what the integer engine computes (up to the fixed-point
precision of its multipliers), the backward pass treats rounding as the identity and clamping
as a gate (zero gradient outside the representable range).

Rounding is half up (`floor(v + 0.5)`), the contract's rule, everywhere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

#: ReLU6 outputs use the full int8 range for [0, 6]: real = 6/255 * (q + 128).
RELU6_SCALE = 6.0 / 255.0
RELU6_ZERO_POINT = -128

#: TWN's threshold factor: a weight is kept (+-1) when |w| > 0.7 * mean|w| of its row.
TERNARY_THRESHOLD = 0.7

#: Scales below this are treated as an all-zero channel (avoids dividing by zero).
MIN_SCALE = 1e-8

#: Largest requantization scale `s_in * s_w / s_out` training lets a layer have. The
#: contract's multipliers and shifts represent scales below 0.5 (docs/FORMAT.md); the packer
#: rounds multipliers to 15 bits, so keep a margin.
MAX_REQUANT_SCALE = 0.49


class _RoundHalfUpSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.floor(x + 0.5)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def round_half_up(x: Tensor) -> Tensor:
    """`floor(x + 0.5)` with a straight-through gradient."""
    return _RoundHalfUpSTE.apply(x)


def fake_quant_affine(x: Tensor, scale: float | Tensor, zero_point: int | Tensor) -> Tensor:
    """int8 per-tensor affine: `q = clamp(round(x / s) + z, -128, 127)`, back to `s (q - z)`."""
    q = torch.clamp(round_half_up(x / scale) + zero_point, -128.0, 127.0)
    return (q - zero_point) * scale


def fake_quant_relu6(x: Tensor) -> Tensor:
    """ReLU6 at the contract's fixed scale: the clamp to [0, 6] is the int8 clamp."""
    return fake_quant_affine(x, RELU6_SCALE, RELU6_ZERO_POINT)


def int8_weight_scale(w: Tensor) -> Tensor:
    """Symmetric per-output-channel scale (dim 0): max|w| / 127."""
    return (w.detach().abs().flatten(1).amax(dim=1) / 127.0).clamp(min=MIN_SCALE)


def fake_quant_int8_weight(w: Tensor, max_scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Weights to [-127, 127] * scale per output channel; returns (weights, scale). A
    `max_scale` caps the scale (the largest weights then saturate)."""
    scale = int8_weight_scale(w)
    if max_scale is not None:
        scale = scale.clamp(max=max_scale)
    shape = (-1,) + (1,) * (w.dim() - 1)
    s = scale.view(shape)
    q = torch.clamp(round_half_up(w / s), -127.0, 127.0)
    return q * s, scale


#: How a pointwise row's threshold is chosen (`prom-train qat --ternary-rule`).
#: `twn-learned-scale` keeps TWN's set of weights but trains each channel's scale by
#: gradient (`QConvBN.ternary_scale`) instead of fitting it to the latent weights.
TERNARY_RULES = ("twn", "l2", "twn-learned-scale")


def ternary_codes(w: Tensor, rule: str = "twn") -> tuple[Tensor, Tensor]:
    """Ternarisation per output channel (dim 0), without gradients. Returns (trits in
    {-1, 0, 1}, alpha).

    Both rules scale the kept weights by `alpha = mean |w|` over them, the L2-optimal scale
    for a given set of trits. They differ in which weights are kept:
    - `twn` (Li & Liu 2016): `|w| > 0.7 * mean|w|` of the row, the closed-form approximation
      of the L2-optimal threshold for weights close to Gaussian or uniform;
    - `l2`: the exactly L2-optimal set, the `k` largest `|w|` where `k` maximises
      `(sum of the k largest |w|)^2 / k` (the error is `sum w^2` minus that). It needs no
      assumption about the weights' distribution, which after the batch-norm fold and QAT
      need not be Gaussian; it costs a sort per row.
    """
    w = w.detach()
    a = w.abs().flatten(1)
    if rule in ("twn", "twn-learned-scale"):
        delta = TERNARY_THRESHOLD * a.mean(dim=1, keepdim=True)
        keep = (a > delta).to(w.dtype)
    elif rule == "l2":
        ranked, order = a.sort(dim=1, descending=True)
        k = torch.arange(1, a.shape[1] + 1, device=a.device, dtype=a.dtype)
        gain = ranked.cumsum(dim=1).square() / k
        best = gain.argmax(dim=1, keepdim=True)  # first maximum: fewest weights on ties
        rank_keep = (torch.arange(a.shape[1], device=a.device) <= best).to(w.dtype)
        rank_keep = rank_keep * (ranked > 0).to(w.dtype)
        keep = torch.zeros_like(a).scatter_(1, order, rank_keep)
    else:
        raise ValueError(f"ternary rule {rule!r} (expected one of {TERNARY_RULES})")
    alpha = (a * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
    alpha = alpha.clamp(min=MIN_SCALE)
    trits = torch.sign(w) * keep.view_as(w)
    return trits, alpha


def fake_quant_ternary_weight(
    w: Tensor, max_scale: float | None = None, rule: str = "twn", scale: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Ternary weights `alpha[n] * t[n][k]` with a straight-through gradient to `w`; a
    `max_scale` caps `alpha`.

    Without `scale`, `alpha` is the rule's fit to the latent weights and carries no
    gradient. With a trained `scale` (one per output channel), that is `alpha` instead and
    receives the task's gradient, `sum_k dL/dwq[n][k] * t[n][k]` (the trits stay the rule's).
    The latent weights only choose the trits, so a fit to them need not be the scale the
    network wants."""
    trits, alpha = ternary_codes(w, rule)
    if scale is not None:
        alpha = scale.clamp(min=MIN_SCALE)
    if max_scale is not None:
        alpha = alpha.clamp(max=max_scale)
    shape = (-1,) + (1,) * (w.dim() - 1)
    wq = trits * alpha.view(shape)
    if scale is None:
        return w + (wq - w).detach(), alpha
    return wq + (w - w.detach()), alpha


def fake_quant_bias(b: Tensor, scale: Tensor) -> Tensor:
    """int32 bias at the accumulator's scale `s_in * s_w[n]` (the packer rounds the same)."""
    return round_half_up(b / scale) * scale


def engine_scale_factors(scales: Tensor) -> Tensor:
    """Per-channel ratio of the requantization scale the packer stores to the exact `scales`
    (1 within 2^-15). `promctl pack` uses `prom_kernels::quantize_scale_short`: a multiplier
    `m` normalised to [2^30, 2^31) (rounded half up), then rounded to its top 15 bits; the
    shift only places it, so the ratio is `rounded(m) / m`. Multiplying by it makes fake
    quantization round where the engine does."""
    s = scales.detach().double()
    mantissa, _ = torch.frexp(s)
    m = mantissa * 2.0**31
    rounded = torch.floor((torch.floor(m + 0.5) + 2.0**15) / 2.0**16) * 2.0**16
    ratio = torch.where(s > 0, rounded / m, torch.ones_like(m))
    return ratio.to(scales.dtype)


def add_factors(scale_a: float, scale_b: float, scale_out: float) -> tuple[float, float]:
    """The residual add's input rescales as the packer stores them (multipliers of at most
    2^22 over a shift of at most 31), as factors on `scale_x / scale_out`."""
    ra, rb = scale_a / scale_out, scale_b / scale_out
    big = max(ra, rb)
    shift = next((s for s in range(31, 0, -1) if math.floor(big * 2.0**s + 0.5) <= 1 << 22), None)
    if shift is None:
        return 1.0, 1.0
    qa = math.floor(ra * 2.0**shift + 0.5) / 2.0**shift
    qb = math.floor(rb * 2.0**shift + 0.5) / 2.0**shift
    return qa / ra, qb / rb


class RangeObserver(nn.Module):
    """Per-tensor activation range for a linear (non-ReLU6) int8 output.

    Tracks the batch min/max while `observing` (a plain average over the first
    `1 / momentum` batches, an exponential moving average after that); the range
    always includes 0 (so zero is exact) and gives `s = (max - min) / 255`,
    `z = round(-128 - min / s)`. Frozen ranges (`observing = False`) are what export uses.
    """

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.observing = True
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("batches", torch.tensor(0, dtype=torch.long))
        # qparams() as Python numbers, kept while the range is frozen: reading the buffers
        # would wait for the GPU once per layer and forward pass.
        self._cached: tuple[float, int] | None = None
        # Observe a central percentile of each batch instead of its min/max (PTQ: clipping
        # rare outliers buys resolution for everything else).
        self.percentile: float | None = None

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        self._cached = None
        if self.percentile is None:
            lo, hi = x.detach().min().float(), x.detach().max().float()
        else:
            flat = x.detach().flatten().float()
            step = max(1, flat.numel() // (1 << 20))  # torch.quantile takes at most 2^24
            q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
            lo, hi = torch.quantile(flat[::step], q.to(flat.device))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        weight = max(self.momentum, 1.0 / float(self.batches + 1))
        self.min_val.lerp_(lo, weight)
        self.max_val.lerp_(hi, weight)
        self.batches += 1

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        self._cached = None
        super()._load_from_state_dict(*args, **kwargs)

    def qparams(self) -> tuple[float, int]:
        if self._cached is not None and not self.observing:
            return self._cached
        lo = min(float(self.min_val), 0.0)
        hi = max(float(self.max_val), 0.0)
        scale = max((hi - lo) / 255.0, 1e-6)
        zero_point = int(min(max(round(-128.0 - lo / scale), -128), 127))
        self._cached = (scale, zero_point)
        return scale, zero_point
