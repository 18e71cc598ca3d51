"""An independent reader and integer simulator of `.prom` models, written from docs/FORMAT.md
alone (it shares no code with the Rust engine), used to check the engine bit for bit.

Integer arithmetic only: sums of products are computed as float64 matrix products, which are
exact here because every partial sum is an integer far below 2^53 (at most 128 * 127 * K);
the requantization is done in int64 exactly as the contract states.

    prom-sim MODEL.prom --idx DIR [--limit N] [--logits-out FILE] [--compare ENGINE_LOGITS]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"PROMMDL\0"
KIND_META, KIND_LABELS, KIND_GRAPH, KIND_WEIGHTS = 1, 2, 3, 4
OP_STEM, OP_DW, OP_PW_TERNARY, OP_ADD, OP_POOL, OP_LINEAR, OP_PW_INT8 = 1, 2, 3, 4, 5, 6, 7


class FormatError(ValueError):
    pass


@dataclass
class TensorRec:
    height: int
    width: int
    channels: int
    scale: float
    zero_point: int


@dataclass
class OpRec:
    kind: int
    stride: int
    inputs: tuple[int, int]
    output: int
    out_min: int
    out_max: int
    shift: int
    mult_a: int
    mult_b: int
    blobs: dict[str, bytes]


class PromModel:
    """A parsed and checked `.prom` file."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 64 or data[:8] != MAGIC:
            raise FormatError("bad magic")
        version, header_size, count, flags, size, table = struct.unpack_from("<IIIIQQ", data, 8)
        if (version, header_size, count, flags) != (1, 64, 4, 0):
            raise FormatError(f"unsupported header {version, header_size, count, flags}")
        if size != len(data) or table != 64:
            raise FormatError("file size or table offset mismatch")
        (crc,) = struct.unpack_from("<I", data, 60)
        table_bytes = data[64 : 64 + 32 * 4]
        if zlib.crc32(data[:60] + table_bytes) != crc:
            raise FormatError("header CRC mismatch")
        sections: dict[int, bytes] = {}
        for i in range(4):
            kind, sflags, off, length, scrc, _ = struct.unpack_from("<IIQQII", table_bytes, 32 * i)
            body = data[off : off + length]
            if off % 64 or len(body) != length or zlib.crc32(body) != scrc or kind in sections:
                raise FormatError(f"section {kind} is damaged")
            sections[kind] = body
        self.meta = json.loads(sections[KIND_META].decode("utf-8"))
        self.labels = sections[KIND_LABELS].decode("utf-8").split("\n")
        g = sections[KIND_GRAPH]
        h, w, in_scale, in_zp, tcount, ocount = struct.unpack_from("<IIfB3xII", g, 0)
        self.input_hw = (h, w)
        self.input_zero_point = in_zp
        self.tensors = []
        at = 32
        for _ in range(tcount):
            th, tw, tc, ts, tz = struct.unpack_from("<IIIfb", g, at)
            self.tensors.append(TensorRec(th, tw, tc, ts, tz))
            at += 24
        weights = sections[KIND_WEIGHTS]
        self.ops = []
        for _ in range(ocount):
            kind, stride, _flags = struct.unpack_from("<BBB", g, at)
            in0, in1, out = struct.unpack_from("<III", g, at + 4)
            omin, omax, shift = struct.unpack_from("<bbB", g, at + 16)
            ma, mb = struct.unpack_from("<ii", g, at + 20)
            blobs = {}
            for j, name in enumerate(("weights", "bias", "multipliers", "shifts")):
                off, length = struct.unpack_from("<QQ", g, at + 32 + 16 * j)
                blobs[name] = weights[off : off + length]
            self.ops.append(OpRec(kind, stride, (in0, in1), out, omin, omax, shift, ma, mb, blobs))
            at += 128
        if len(self.labels) != self.tensors[-1].channels:
            raise FormatError("label count differs from the classifier's outputs")


def unpack_trits(packed: bytes, n: int, k: int) -> np.ndarray:
    """Five ternary weights per byte, base 3, digit = w + 1 (docs/FORMAT.md)."""
    row = (k + 4) // 5
    codes = np.frombuffer(packed, dtype=np.uint8).reshape(n, row).astype(np.int64)
    digits = np.empty((n, row, 5), dtype=np.int64)
    for j in range(5):
        digits[:, :, j] = codes % 3
        codes = codes // 3
    return (digits.reshape(n, row * 5)[:, :k] - 1).astype(np.int64)


def requantize(acc, bias, mult, shift, zp: int, lo: int, hi: int) -> np.ndarray:
    """`clamp(floor(((acc + bias) * m + 2^(s-1)) / 2^s) + zp, lo, hi)`, acc + bias wrapping
    in int32."""
    x = (acc.astype(np.int64) + bias).astype(np.int64)
    x = ((x + 2**31) % 2**32) - 2**31
    s = np.asarray(shift, dtype=np.int64)
    y = (x * mult + (np.int64(1) << (s - 1))) >> s
    return np.clip(y + zp, lo, hi)


def conv_epilogue(acc: np.ndarray, op: OpRec, out: TensorRec) -> np.ndarray:
    """A convolution's requantization with its per-channel blobs (bias, multipliers,
    shifts)."""
    b = op.blobs
    shifts = np.frombuffer(b["shifts"], np.uint8)
    multipliers = _i32(b["multipliers"])
    return requantize(
        acc, _i32(b["bias"]), multipliers, shifts, out.zero_point, op.out_min, op.out_max
    )


def _i32(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<i4").astype(np.int64)


def _matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact integer product via float64 (every partial sum is an integer below 2^53)."""
    return np.rint(x.astype(np.float64) @ w.astype(np.float64).T).astype(np.int64)


def run(model: PromModel, images: np.ndarray) -> np.ndarray:
    """uint8 images (B, H, W, 3) to int32 logits (B, classes)."""
    acts: list[np.ndarray | None] = [None] * len(model.tensors)
    acts[0] = images.astype(np.int64)
    batch = images.shape[0]
    logits = None
    for i, op in enumerate(model.ops):
        xt, yt = model.tensors[op.inputs[0]], model.tensors[i + 1]
        x = acts[op.inputs[0]]
        assert x is not None
        b = op.blobs
        bias = _i32(b["bias"])
        if op.kind in (OP_STEM, OP_DW):
            c = yt.channels
            s = op.stride
            if op.kind == OP_STEM:
                pad_value, cin = model.input_zero_point, 3
                w = np.frombuffer(b["weights"], dtype=np.int8).astype(np.int64).reshape(27, c)
            else:
                pad_value, cin = xt.zero_point, c
                w = np.frombuffer(b["weights"], dtype=np.int8).astype(np.int64).reshape(9, c)
            padded = np.full((batch, xt.height + 2, xt.width + 2, cin), pad_value, np.int64)
            padded[:, 1:-1, 1:-1, :] = x
            ho, wo = yt.height, yt.width
            acc = np.zeros((batch, ho, wo, c), np.int64)
            for ky in range(3):
                for kx in range(3):
                    tap = padded[:, ky : ky + s * (ho - 1) + 1 : s, kx : kx + s * (wo - 1) + 1 : s]
                    if op.kind == OP_STEM:
                        wt = w[(ky * 3 + kx) * 3 : (ky * 3 + kx) * 3 + 3]  # (3, C)
                        acc += _matmul(tap.reshape(-1, 3), wt.T).reshape(acc.shape)
                    else:
                        acc += tap * w[ky * 3 + kx]
            y = conv_epilogue(acc, op, yt)
        elif op.kind in (OP_PW_TERNARY, OP_PW_INT8):
            k, n = xt.channels, yt.channels
            if op.kind == OP_PW_TERNARY:
                w = unpack_trits(b["weights"], n, k)
            else:
                w = np.frombuffer(b["weights"], np.int8).astype(np.int64).reshape(n, k)
            acc = _matmul(x.reshape(-1, k), w).reshape(batch, xt.height, xt.width, n)
            y = conv_epilogue(acc, op, yt)
        elif op.kind == OP_ADD:
            bt = model.tensors[op.inputs[1]]
            other = acts[op.inputs[1]]
            assert other is not None
            total = (x - xt.zero_point) * op.mult_a + (other - bt.zero_point) * op.mult_b
            v = (total + (1 << (op.shift - 1))) >> op.shift
            y = np.clip(v + yt.zero_point, op.out_min, op.out_max)
        elif op.kind == OP_POOL:
            acc = (x - xt.zero_point).sum(axis=(1, 2))
            y = requantize(
                acc, 0, op.mult_a, op.shift, yt.zero_point, op.out_min, op.out_max
            ).reshape(batch, 1, 1, -1)
        elif op.kind == OP_LINEAR:
            k, n = xt.channels, yt.channels
            w = np.frombuffer(b["weights"], np.int8).astype(np.int64).reshape(n, k)
            acc = _matmul(x.reshape(batch, k), w) + bias
            logits = ((acc + 2**31) % 2**32) - 2**31
            y = logits
        else:
            raise FormatError(f"op {i}: unknown kind {op.kind}")
        acts[i + 1] = y
    assert logits is not None
    return logits.astype(np.int32)


def load_idx_inputs(directory: str, side: int, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST test images centred on a black side x side canvas, as RGB."""
    from .data import _idx_path, read_idx

    images = read_idx(_idx_path(directory, "t10k-images-idx3-ubyte"))
    labels = read_idx(_idx_path(directory, "t10k-labels-idx1-ubyte"))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    n, h, w = images.shape
    canvas = np.zeros((n, side, side), np.uint8)
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[:, y0 : y0 + h, x0 : x0 + w] = images
    return np.repeat(canvas[..., None], 3, axis=3), labels.astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="prom-sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--idx", required=True, help="directory with t10k idx files")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--logits-out", help="write int32 logits (little-endian, images x classes)")
    ap.add_argument("--compare", help="engine logits (promctl eval --logits) to compare with")
    args = ap.parse_args(argv)
    with open(args.model, "rb") as f:
        model = PromModel(f.read())
    side = model.input_hw[0]
    images, labels = load_idx_inputs(args.idx, side, args.limit)
    out = np.concatenate(
        [run(model, images[i : i + args.batch]) for i in range(0, len(images), args.batch)]
    )
    top1 = float((out.argmax(1) == labels).mean() * 100.0)
    report: dict = {"images": len(out), "top1": top1}
    if args.logits_out:
        out.astype("<i4").tofile(args.logits_out)
    if args.compare:
        engine = np.fromfile(args.compare, dtype="<i4").reshape(-1, out.shape[1])
        if engine.shape != out.shape:
            print(f"prom-sim: engine logits {engine.shape} vs {out.shape}", file=sys.stderr)
            return 1
        equal = (engine == out).all(axis=1)
        report["bit_exact_images"] = int(equal.sum())
        report["differing_images"] = int((~equal).sum())
    print(json.dumps(report))
    return 0 if report.get("differing_images", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
