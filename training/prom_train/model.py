"""MobileNetV2 as the PROM engine runs it, with a float mode and a fake-quantized (QAT) mode.

The graph is exactly the engine's (engine/src/mobilenet.rs): stem 3x3 s2, inverted residual
blocks (optional 1x1 expand, 3x3 depthwise, 1x1 linear project, residual add where the shape
allows), a final 1x1 conv, global average pool and an int8 linear classifier. The parameters
keep torchvision's names (`features.N...`, `classifier.1...`), so a torchvision state dict
(`--init`) loads directly and a checkpoint of either mode loads into the other.

The network takes the uint8 RGB image (as float values 0..255, NCHW) the daemon feeds the
engine; the input zero point `z_in` is its padding value and the mean/std normalisation is
folded into the stem (see docs/TRAINING.md).

Modes:
- float: convolution, batch norm (training statistics), ReLU6; the float twin;
- quantized: batch norm folded into each convolution with its frozen running statistics,
  weights fake-quantized after the fold (ternary or int8 per output channel), biases at the
  accumulator scale, activations int8 (ReLU6 at the fixed scale, linear outputs and residual
  adds with observed ranges), average pool and classifier as the engine computes them.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from . import quant

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Inverted-residual settings (expansion t, channels c, repeats n, stride s), as the engine.
BLOCKS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]

PRECISIONS = ("ternary", "int8")


class QConvBN(nn.Module):
    """A convolution with its batch norm: `stem`, `depthwise` or `pointwise`."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, kind: str, relu6: bool) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.kind = kind
        self.relu6 = relu6
        self.precision = "ternary" if kind == "pointwise" else "int8"
        self.ternary_rule = "twn"
        self.out_observer = None if relu6 else quant.RangeObserver()

    def folded(self) -> tuple[Tensor, Tensor]:
        """Weights and bias with the batch norm's running statistics folded in."""
        gain = self.gain()
        w = self.conv.weight * gain.view(-1, 1, 1, 1)
        b = self.bn.bias - self.bn.running_mean * gain
        return w, b

    def gain(self) -> Tensor:
        """The batch norm's per-channel factor that `folded` multiplies the weights by."""
        bn = self.bn
        return bn.weight / torch.sqrt(bn.running_var + bn.eps)

    def use_ternary_rule(self, rule: str) -> None:
        """Sets the rule; `twn-learned-scale` gives the layer a trained scale per output
        channel: `ternary_scale` is its logarithm relative to the batch norm's gain (the
        folded scale is `exp(ternary_scale) * |gain|`, so it follows the gain as that trains,
        and an optimizer's step changes it by a ratio, whatever its size). Until it is loaded
        from a checkpoint or set by `init_ternary_scale` it holds NaN."""
        self.ternary_rule = rule
        learned = rule == "twn-learned-scale" and self.kind == "pointwise"
        if learned and getattr(self, "ternary_scale", None) is None:
            out = self.conv.weight.shape[0]
            nan = torch.full((out,), float("nan"), device=self.conv.weight.device)
            self.ternary_scale = nn.Parameter(nan)
            self.scale_ready = False
        elif not learned and getattr(self, "ternary_scale", None) is not None:
            del self.ternary_scale

    @torch.no_grad()
    def init_ternary_scale(self) -> None:
        """The trained scale starts as TWN's fit to the current folded weights (so the
        network computes what it did under `twn`, up to float rounding of the scale)."""
        if getattr(self, "ternary_scale", None) is None or self.scale_ready:
            return
        w, _ = self.folded()
        _, alpha = quant.ternary_codes(w, "twn")
        relative = alpha / self.gain().abs().clamp(min=quant.MIN_SCALE)
        self.ternary_scale.copy_(torch.log(relative.clamp(min=quant.MIN_SCALE)))
        self.scale_ready = True

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        key = prefix + "ternary_scale"
        present = key in state_dict
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )
        if getattr(self, "ternary_scale", None) is not None:
            self.scale_ready = present
            # A checkpoint trained under another rule: the scale starts from TWN's fit.
            if not present and key in missing_keys:
                missing_keys.remove(key)

    def quantized_weights(
        self, w: Tensor, in_scale: float | None = None, trained_scale: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Quantized weights and their per-channel scales. Given the input scale, the scales
        are capped so the requantization scale `s_in * s_w / s_out` stays within the
        contract's range (below 0.5; docs/TRAINING.md). `w` are the folded weights; with
        `trained_scale` off (unfolded weights) a learned-scale layer quantizes as TWN."""
        cap = None
        if in_scale is not None:
            cap = quant.MAX_REQUANT_SCALE * self.out_qparams()[0] / in_scale
        if self.precision == "ternary":
            scale = None
            if trained_scale and getattr(self, "ternary_scale", None) is not None:
                self.init_ternary_scale()
                scale = torch.exp(self.ternary_scale) * self.gain().abs()
            return quant.fake_quant_ternary_weight(w, cap, self.ternary_rule, scale)
        return quant.fake_quant_int8_weight(w, cap)

    @torch.no_grad()
    def observe_batch_norm(self, x: Tensor) -> None:
        """Batch-norm re-estimation for quantized weights: the running statistics become
        those of this layer's output with its weights quantized (ternary or int8 per channel
        commute with the fold's per-channel gain), averaged over the batches seen, so the
        folded network is normalised again after quantization."""
        wq, _ = self.quantized_weights(self.conv.weight, trained_scale=False)
        c = self.conv
        y = F.conv2d(x, wq, None, c.stride, c.padding, c.dilation, c.groups)
        mean = y.mean(dim=(0, 2, 3))
        var = y.var(dim=(0, 2, 3), unbiased=False)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            n = float(torch.distributed.get_world_size())
            torch.distributed.all_reduce(mean)
            torch.distributed.all_reduce(var)
            mean, var = mean / n, var / n
        seen = int(self.bn.num_batches_tracked)
        weight = 1.0 / (seen + 1)
        self.bn.running_mean.lerp_(mean, weight)
        self.bn.running_var.lerp_(var, weight)
        self.bn.num_batches_tracked += 1

    def out_qparams(self) -> tuple[float, int]:
        if self.out_observer is None:
            return quant.RELU6_SCALE, quant.RELU6_ZERO_POINT
        return self.out_observer.qparams()

    def float_forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        return torch.clamp(y, 0.0, 6.0) if self.relu6 else y

    def engine_factors(self, in_scale: float, w_scale: Tensor) -> Tensor:
        """Per-channel ratio of the engine's stored requantization scale to the exact one."""
        out_scale = self.out_qparams()[0]
        return quant.engine_scale_factors(in_scale * w_scale.detach() / out_scale).view(1, -1, 1, 1)

    def requantize(self, y: Tensor, in_scale: float, w_scale: Tensor) -> Tensor:
        """The output quantization of `y = acc + bias` (real units), with the engine's
        rounded multipliers once the output range is known."""
        if self.relu6:
            return quant.fake_quant_relu6(y * self.engine_factors(in_scale, w_scale))
        assert self.out_observer is not None
        if self.out_observer.observing:
            self.out_observer.observe(y)
        scale, zp = self.out_observer.qparams()
        return quant.fake_quant_affine(y * self.engine_factors(in_scale, w_scale), scale, zp)

    def quant_forward(self, x: Tensor, in_scale: float, w: Tensor, b: Tensor) -> Tensor:
        wq, w_scale = self.quantized_weights(w, in_scale)
        bq = quant.fake_quant_bias(b, in_scale * w_scale)
        c = self.conv
        y = F.conv2d(x, wq, bq, c.stride, c.padding, c.dilation, c.groups)
        return self.requantize(y, in_scale, w_scale)


class Stem(QConvBN):
    """The 3x3 stride-2 stem on the uint8 image, with the mean/std normalisation folded in.

    Input: `x = (u - z_in) / 255`, padded with zeros (the engine pads `u` with `z_in`). The
    normalised image is `(x + z_in / 255 - mean) / std` per channel, so the folded weights are
    `w / std` and the bias gains `sum w (z_in / 255 - mean) / std` over the taps.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, mean, std, zero_point: int) -> None:
        super().__init__(conv, bn, "stem", relu6=True)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.zero_point = zero_point

    def offset(self) -> Tensor:
        return (self.zero_point / 255.0 - self.mean) / self.std

    def folded(self) -> tuple[Tensor, Tensor]:
        w, b = super().folded()
        wn = w / self.std.view(1, 3, 1, 1)
        b = b + (w * self.offset().view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
        return wn, b

    def float_forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (1, 1, 1, 1))
        x = x / self.std.view(1, 3, 1, 1) + self.offset().view(1, 3, 1, 1)
        c = self.conv
        y = self.bn(F.conv2d(x, c.weight, None, c.stride, 0))
        return torch.clamp(y, 0.0, 6.0)

    def quant_forward(self, x: Tensor, in_scale: float, w: Tensor, b: Tensor) -> Tensor:
        wq, w_scale = self.quantized_weights(w, in_scale)
        bq = quant.fake_quant_bias(b, in_scale * w_scale)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), wq, bq, self.conv.stride, 0)
        return self.requantize(y, in_scale, w_scale)


class Block(nn.Module):
    """Inverted residual: layers in order, residual when `residual`."""

    def __init__(self, layers: list[QConvBN], residual: bool) -> None:
        super().__init__()
        self.conv = nn.ModuleList(layers)
        self.residual = residual
        self.add_observer = quant.RangeObserver() if residual else None


class PromMobileNetV2(nn.Module):
    """MobileNetV2 on the PROM engine's graph. Call `set_quantized(True)` for QAT."""

    def __init__(
        self,
        width: float = 1.0,
        classes: int = 1000,
        resolution: int = 224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dropout: float = 0.2,
        init_state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0.35 <= width <= 1.4:
            raise ValueError(f"width multiplier {width} is outside 0.35..1.4")
        if not 32 <= resolution <= 224:
            raise ValueError(f"resolution {resolution} is outside 32..224")
        self.width = width
        self.classes = classes
        self.resolution = resolution
        self.input_zero_point = min(255, max(0, round(255.0 * sum(mean) / len(mean))))
        self.quantized = False
        self.recalibrating_bn = False
        tv = torchvision_mobilenet_v2(width, classes, init_state)
        feats = tv.features
        self.features = nn.ModuleList()
        self.features.append(Stem(feats[0][0], feats[0][1], mean, std, self.input_zero_point))
        for f in feats[1:-1]:
            mods = list(f.conv)
            layers: list[QConvBN] = []
            if len(mods) == 3:  # t == 1: depthwise (Conv2dNormActivation), project conv, bn
                layers.append(QConvBN(mods[0][0], mods[0][1], "depthwise", relu6=True))
            else:
                layers.append(QConvBN(mods[0][0], mods[0][1], "pointwise", relu6=True))
                layers.append(QConvBN(mods[1][0], mods[1][1], "depthwise", relu6=True))
            layers.append(QConvBN(mods[-2], mods[-1], "pointwise", relu6=False))
            self.features.append(Block(layers, residual=f.use_res_connect))
        last = feats[-1]
        self.features.append(QConvBN(last[0], last[1], "pointwise", relu6=True))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.ModuleDict({"1": tv.classifier[1]})

    # -- structure ---------------------------------------------------------------------------

    def convs(self) -> Iterator[QConvBN]:
        for f in self.features:
            if isinstance(f, Block):
                yield from f.conv  # type: ignore[misc]
            else:
                yield f  # type: ignore[misc]

    def pointwise_layers(self) -> list[QConvBN]:
        return [c for c in self.convs() if c.kind == "pointwise"]

    def set_pointwise_precision(self, precisions: list[str]) -> None:
        layers = self.pointwise_layers()
        if len(precisions) != len(layers):
            raise ValueError(f"{len(precisions)} precisions for {len(layers)} pointwise layers")
        for layer, p in zip(layers, precisions):
            if p not in PRECISIONS:
                raise ValueError(f"pointwise precision {p!r} (expected one of {PRECISIONS})")
            layer.precision = p

    def set_ternary_rule(self, rule: str) -> None:
        """How ternary layers choose their kept weights (`quant.ternary_codes`)."""
        if rule not in quant.TERNARY_RULES:
            raise ValueError(f"ternary rule {rule!r} (expected one of {quant.TERNARY_RULES})")
        for layer in self.pointwise_layers():
            layer.use_ternary_rule(rule)

    def init_ternary_scales(self) -> None:
        """Starts every trained ternary scale not yet loaded or set (`init_ternary_scale`)."""
        for layer in self.pointwise_layers():
            layer.init_ternary_scale()

    def set_quantized(self, on: bool) -> None:
        self.quantized = on

    def observers(self) -> Iterator[quant.RangeObserver]:
        for m in self.modules():
            if isinstance(m, quant.RangeObserver):
                yield m

    def set_observing(self, on: bool) -> None:
        for o in self.observers():
            o.observing = on

    def set_observer_percentile(self, percentile: float | None) -> None:
        """Observe central percentiles instead of min/max (None: min/max)."""
        for o in self.observers():
            o.percentile = percentile

    @torch.no_grad()
    def recalibrate_batch_norm(self, batches) -> None:
        """Re-estimates every batch norm (but the stem's, whose int8 weights barely move it)
        for the quantized weights, layer after layer in one pass per batch, then forgets the
        activation ranges observed meanwhile (calibrate them again afterwards)."""
        was_training = self.training
        self.eval()
        for layer in self.convs():
            if not isinstance(layer, Stem):
                layer.bn.num_batches_tracked.zero_()
        self.recalibrating_bn = True
        self.set_observing(True)
        try:
            for x in batches:
                self(x)
        finally:
            self.recalibrating_bn = False
            self.set_observing(False)
            for o in self.observers():
                o.batches.zero_()
            self.train(was_training)

    # -- forward -----------------------------------------------------------------------------

    def forward(self, u: Tensor) -> Tensor:
        """`u`: uint8 RGB as float 0..255, NCHW. Returns logits (float; the engine's int32
        logits times their scale in quantized mode)."""
        stem = self.features[0]
        x = (u - stem.zero_point) / 255.0
        scale = 1.0 / 255.0
        for f in self.features:
            if isinstance(f, Block):
                block_in, in_scale = x, scale
                for layer in f.conv:
                    x, scale = self._conv(layer, x, scale)
                if f.residual:
                    if not self.quantized:
                        x = block_in + x
                        continue
                    obs = f.add_observer
                    assert obs is not None
                    if obs.observing:
                        obs.observe(block_in + x)
                    out_scale, zp = obs.qparams()
                    fa, fb = quant.add_factors(in_scale, scale, out_scale)
                    x = quant.fake_quant_affine(block_in * fa + x * fb, out_scale, zp)
                    scale = out_scale
            else:
                x, scale = self._conv(f, x, scale)
        x = x.mean(dim=(2, 3))
        if self.quantized:
            zp = self.features[-1].out_qparams()[1]
            x = quant.fake_quant_affine(x, scale, zp)
        x = self.dropout(x)
        return self._classify(x, scale)

    def _conv(self, layer: QConvBN, x: Tensor, scale: float) -> tuple[Tensor, float]:
        if not self.quantized:
            return layer.float_forward(x), scale
        if self.recalibrating_bn and not isinstance(layer, Stem):
            layer.observe_batch_norm(x)
        w, b = layer.folded()
        y = layer.quant_forward(x, scale, w, b)
        return y, layer.out_qparams()[0]

    def _classifier_weights(self) -> tuple[Tensor, Tensor]:
        w = self.classifier["1"].weight
        scale = (w.detach().abs().max() / 127.0).clamp(min=quant.MIN_SCALE)
        q = torch.clamp(quant.round_half_up(w / scale), -127.0, 127.0)
        return q * scale, scale

    def classifier_qparams(self) -> tuple[Tensor, float]:
        """Per-tensor symmetric int8 weights of the classifier (its int32 logits have one
        scale) and that weight scale."""
        wq, scale = self._classifier_weights()
        return wq, float(scale)

    def _classify(self, x: Tensor, in_scale: float) -> Tensor:
        lin = self.classifier["1"]
        if not self.quantized:
            return lin(x)
        # The scale stays a tensor here: reading it would wait for the GPU every step.
        wq, w_scale = self._classifier_weights()
        bq = quant.fake_quant_bias(lin.bias, in_scale * w_scale)
        return F.linear(x, wq, bq)


def torchvision_mobilenet_v2(
    width: float, classes: int, init_state: dict[str, Any] | None = None
) -> nn.Module:
    """torchvision's MobileNetV2, loaded from a torchvision-layout state dict when given.

    A state dict with another class count (ImageNet's 1000 when fine-tuning) loads everything
    but the classifier, which keeps torchvision's fresh initialisation for `classes`.
    """
    if init_state is None:
        return torchvision.models.mobilenet_v2(width_mult=width, num_classes=classes)
    head = init_state.get("classifier.1.weight")
    if head is None:
        raise ValueError("the state dict has no classifier.1.weight: not a MobileNetV2")
    tv = torchvision.models.mobilenet_v2(width_mult=width, num_classes=head.shape[0])
    try:
        tv.load_state_dict(init_state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"the state dict does not fit MobileNetV2 at width {width}: {str(e).splitlines()[0]}"
        ) from e
    if head.shape[0] != classes:
        fresh = torchvision.models.mobilenet_v2(width_mult=width, num_classes=classes)
        tv.classifier[1] = fresh.classifier[1]
    return tv
