"""Export of a (fake-)quantized PromMobileNetV2 to the interchange file `promctl pack` reads.

The file is safetensors: float32 tensors (weights already on their quantization grid, in
PyTorch layout, with BN and the input normalisation folded in; per-channel weight scales;
float biases) and, in the header's `__metadata__`, the graph as JSON under `prom_graph`.
docs/TRAINING.md documents every field. The integer conversion (multipliers, shifts,
zero-point folds, trit packing) is done once, in Rust, by `promctl pack`.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Any

import numpy as np
import torch

from . import quant
from .model import Block, PromMobileNetV2, QConvBN

INTERCHANGE_FORMAT = "prom-interchange"
INTERCHANGE_VERSION = 1


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Writes float32 tensors in the safetensors layout (8-byte little-endian header length,
    JSON header, data), through a temporary file renamed over `path`."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, array in tensors.items():
        a = np.ascontiguousarray(array, dtype="<f4")
        header[name] = {
            "dtype": "F32",
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
        blobs.append(a.tobytes())
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".export-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads a float32 safetensors file (what `write_safetensors` writes)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a : 8 + n + b], dtype="<f4").reshape(info["shape"])
    return out, meta


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().astype(np.float32)


@torch.no_grad()
def export_interchange(model: PromMobileNetV2, path: str, notes: str = "") -> dict[str, Any]:
    """Writes `model` (in quantized mode, observers calibrated) to `path`; returns the graph."""
    if not model.quantized:
        raise ValueError("export needs the quantized model (QAT or PTQ), not the float twin")
    model = model.cpu().eval()
    tensors: dict[str, np.ndarray] = {}
    ops: list[dict[str, Any]] = []
    scale = 1.0 / 255.0
    current = 0  # tensor index of the running activation

    def conv_op(layer: QConvBN, x_index: int, in_scale: float) -> tuple[int, float]:
        i = len(ops)
        w, b = layer.folded()
        wq, w_scale = layer.quantized_weights(w, in_scale)
        out_scale, out_zp = layer.out_qparams()
        worst = in_scale * float(w_scale.max()) / out_scale
        if worst >= quant.MAX_REQUANT_SCALE + 0.005:
            raise ValueError(
                f"op {i} ({layer.kind}): requantization scale {worst:.3f} is outside the "
                "contract's range (below 0.5)"
            )
        name = f"op{i}"
        tensors[f"{name}.weight"] = _np(wq)
        tensors[f"{name}.weight_scale"] = _np(w_scale)
        tensors[f"{name}.bias"] = _np(b)
        op: dict[str, Any] = {
            "kind": layer.kind,
            "input": x_index,
            "stride": int(layer.conv.stride[0]),
            "relu6": layer.relu6,
            "weight": f"{name}.weight",
            "weight_scale": f"{name}.weight_scale",
            "bias": f"{name}.bias",
            "output_scale": out_scale,
            "output_zero_point": out_zp,
        }
        if layer.kind == "pointwise":
            op["precision"] = layer.precision
        ops.append(op)
        return i + 1, out_scale

    for f in model.features:
        if isinstance(f, Block):
            block_in = current
            for layer in f.conv:
                current, scale = conv_op(layer, current, scale)
            if f.residual:
                assert f.add_observer is not None
                add_scale, add_zp = f.add_observer.qparams()
                ops.append(
                    {
                        "kind": "add",
                        "inputs": [block_in, current],
                        "output_scale": add_scale,
                        "output_zero_point": add_zp,
                    }
                )
                current, scale = len(ops), add_scale
        else:
            current, scale = conv_op(f, current, scale)
    pool_zp = model.features[-1].out_qparams()[1]
    ops.append(
        {"kind": "avgpool", "input": current, "output_scale": scale, "output_zero_point": pool_zp}
    )
    current = len(ops)
    wq, w_scale = model.classifier_qparams()
    i = len(ops)
    tensors[f"op{i}.weight"] = _np(wq)
    tensors[f"op{i}.weight_scale"] = np.array([w_scale], dtype=np.float32)
    tensors[f"op{i}.bias"] = _np(model.classifier["1"].bias)
    ops.append(
        {
            "kind": "linear",
            "input": current,
            "weight": f"op{i}.weight",
            "weight_scale": f"op{i}.weight_scale",
            "bias": f"op{i}.bias",
            "output_scale": scale * w_scale,
            "output_zero_point": 0,
        }
    )
    graph = {
        "format": INTERCHANGE_FORMAT,
        "version": INTERCHANGE_VERSION,
        "architecture": "mobilenetv2",
        "width_multiplier": model.width,
        "classes": model.classes,
        "input": {
            "height": model.resolution,
            "width": model.resolution,
            "scale": 1.0 / 255.0,
            "zero_point": model.input_zero_point,
        },
        "notes": notes,
        "ops": ops,
    }
    write_safetensors(path, tensors, {"prom_graph": json.dumps(graph)})
    return graph
