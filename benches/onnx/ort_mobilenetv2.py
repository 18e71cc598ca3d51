#!/usr/bin/env python3
"""Peer benchmark: ONNX Runtime (CPU) on an int8 QDQ MobileNetV2-1.0-224.

Builds MobileNetV2 (width 1.0, 1x3x224x224 NCHW, 1000 classes) directly with
onnx.helper and deterministic random He-normal weights (no torch, no downloads),
quantizes it to int8 QDQ with per-channel weights using
onnxruntime.quantization.quantize_static (calibrated on deterministic random
inputs), then times single-image inference with the CPU execution provider.

Progress goes to stderr; the JSON result goes to stdout (and --json-out FILE).
Normally run through run.sh, which sets up the pinned venv.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

MODEL_NAME = "mobilenetv2-1.0-224 int8 QDQ per-channel (random weights)"
OPSET = 17
IN_SHAPE = (1, 3, 224, 224)
NUM_CLASSES = 1000
# (expansion t, output channels c, repeats n, first stride s) -- MobileNetV2 paper, Table 2.
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# Bump when the graph construction or quantization recipe changes (invalidates the cache).
RECIPE_VERSION = 2

# Activation type. ONNX Runtime's quantization guide ("Data type selection") names S8S8 QDQ
# as the general first choice (and quantize_static defaults to it), but also says that on
# x86-64 with AVX2/AVX-512 ORT uses VPMADDUBSW for U8S8 "for performance". Measured with
# ORT 1.32 on x86-64: with QUInt8 activations the whole graph fuses (52 QLinearConv,
# 10 QLinearAdd, QGemm), while with QInt8 activations 15 Convs next to the residual Adds and
# the 10 Adds stay float between Q/DQ pairs (plus 32 layout Transposes), about 2x slower.
# So the default is U8S8, ORT's fastest int8 path; --activation-type s8 is kept for
# comparison. The result JSON records the op types ORT actually runs.
ACT_TYPES = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
ACT_REASON = {
    "u8": "QUInt8 activations (U8S8): ORT's documented x86-64 performance path (VPMADDUBSW/VNNI); "
          "fully fuses to QLinearConv/QLinearAdd/QGemm",
    "s8": "QInt8 activations (S8S8): ORT's general default for QDQ; on x86-64 with ORT 1.32 "
          "residual Adds and adjacent Convs stay float",
}


def log(msg: str) -> None:
    print(f"[ort-bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------


class GraphBuilder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.macs = 0
        self.params = 0
        self._n = 0
        # Clip bounds shared by every ReLU6.
        self.inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"))
        self.inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"))

    def _name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self._n}"

    def conv(self, x: str, hw: int, cin: int, cout: int, k: int, stride: int,
             group: int = 1, relu6: bool = True) -> tuple[str, int]:
        """Conv (BN folded into weight + bias), optionally followed by ReLU6 = Clip(0, 6)."""
        name = self._name("conv")
        fan_in = (cin // group) * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * math.sqrt(2.0 / fan_in))
        # Stand-in for a BN-folded bias: small random values.
        b = self.rng.standard_normal(cout) * 0.01
        self.inits.append(numpy_helper.from_array(w.astype(np.float32), f"{name}_W"))
        self.inits.append(numpy_helper.from_array(b.astype(np.float32), f"{name}_B"))
        pad = k // 2
        out = f"{name}_out"
        self.nodes.append(helper.make_node(
            "Conv", [x, f"{name}_W", f"{name}_B"], [out], name=name,
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
            group=group, dilations=[1, 1]))
        hw_out = (hw + 2 * pad - k) // stride + 1
        self.macs += hw_out * hw_out * cout * (cin // group) * k * k
        self.params += w.size + b.size
        if relu6:
            act = f"{name}_relu6"
            self.nodes.append(helper.make_node(
                "Clip", [out, "relu6_min", "relu6_max"], [act], name=f"{name}_clip"))
            out = act
        return out, hw_out

    def add(self, a: str, b: str) -> str:
        name = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [f"{name}_out"], name=name))
        return f"{name}_out"

    def gemm(self, x: str, cin: int, cout: int, out: str) -> str:
        w = self.rng.standard_normal((cout, cin)) * math.sqrt(2.0 / cin)
        b = self.rng.standard_normal(cout) * 0.01
        self.inits.append(numpy_helper.from_array(w.astype(np.float32), "fc_W"))
        self.inits.append(numpy_helper.from_array(b.astype(np.float32), "fc_B"))
        self.nodes.append(helper.make_node(
            "Gemm", [x, "fc_W", "fc_B"], [out], name="fc", transB=1))
        self.macs += cin * cout
        self.params += w.size + b.size
        return out


def build_mobilenetv2(seed: int) -> tuple[onnx.ModelProto, int, int]:
    g = GraphBuilder(seed)
    x, hw = g.conv("input", IN_SHAPE[2], 3, 32, 3, 2)  # stem
    cin = 32
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            block_in = x
            y = x
            if t != 1:
                y, _ = g.conv(y, hw, cin, hidden, 1, 1)  # expand 1x1 + ReLU6
            y, hw_out = g.conv(y, hw, hidden, hidden, 3, stride, group=hidden)  # depthwise
            y, _ = g.conv(y, hw_out, hidden, c, 1, 1, relu6=False)  # project 1x1 (linear)
            if stride == 1 and cin == c:
                y = g.add(block_in, y)
            x, hw, cin = y, hw_out, c
    x, hw = g.conv(x, hw, cin, 1280, 1, 1)  # final 1x1 conv + ReLU6
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap_out"], name="gap"))
    g.nodes.append(helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten",
                                    axis=1))
    g.gemm("flat_out", 1280, NUM_CLASSES, "logits")

    graph = helper.make_graph(
        g.nodes, "mobilenetv2_1.0_224",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(IN_SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, NUM_CLASSES])],
        initializer=g.inits)
    model = helper.make_model(graph, producer_name="prom-daemon benches/onnx",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 9)  # loadable by older runtimes too
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    return model, g.macs, g.params


class RandomCalibrationReader(CalibrationDataReader):
    """Deterministic random calibration inputs (roughly ImageNet-normalized scale)."""

    def __init__(self, count: int, seed: int):
        rng = np.random.default_rng(seed)
        self._data = [{"input": rng.standard_normal(IN_SHAPE, dtype=np.float32)}
                      for _ in range(count)]
        self._it = iter(self._data)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._data)


def build_models(cache_dir: Path, seed: int, calib: int, act: str, rebuild: bool):
    """Returns (float_path, int8_path, macs, params); reuses a cached build when valid."""
    key_src = json.dumps({"recipe": RECIPE_VERSION, "seed": seed, "calib": calib, "act": act,
                          "onnx": onnx.__version__, "ort": ort.__version__,
                          "numpy": np.__version__, "opset": OPSET})
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    d = cache_dir / f"mobilenetv2-{key}"
    fp32, int8, meta = d / "mobilenetv2_fp32.onnx", d / "mobilenetv2_int8_qdq.onnx", d / "meta.json"
    if not rebuild and fp32.is_file() and int8.is_file() and meta.is_file():
        m = json.loads(meta.read_text())
        log(f"reusing cached models in {d}")
        return fp32, int8, m["macs"], m["params"]

    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, macs, params = build_mobilenetv2(seed)
    onnx.save(model, str(fp32))
    log(f"built float MobileNetV2: {len(model.graph.node)} nodes, {params / 1e6:.3f} M params, "
        f"{macs / 1e6:.1f} M MACs ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    # ORT's recommended pre-processing (ONNX shape inference + basic ORT optimizations); the
    # graph is already BN-folded so it only adds shape information.
    pre = d / "mobilenetv2_fp32.pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    tmp = d / "mobilenetv2_int8_qdq.onnx.tmp"
    quantize_static(
        str(pre), str(tmp),
        RandomCalibrationReader(calib, seed + 1),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=ACT_TYPES[act],
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    os.replace(tmp, int8)
    meta.write_text(json.dumps({"macs": macs, "params": params, "key": json.loads(key_src)}))
    log(f"quantized to int8 QDQ per-channel ({calib} calibration inputs, "
        f"{time.perf_counter() - t0:.1f} s): {int8}")
    return fp32, int8, macs, params


# --------------------------------------------------------------------------------------
# Host information
# --------------------------------------------------------------------------------------

INT8_FLAGS = ["avx2", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "amx_int8",  # x86-64
              "asimddp", "i8mm", "sve", "sve2"]  # aarch64 (dot product, int8 matmul)


def cpu_info() -> tuple[str, list[str]]:
    name, flags = None, set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if ":" not in line:
            continue
        k, v = (s.strip() for s in line.split(":", 1))
        if k == "model name" and name is None:
            name = v
        elif k in ("flags", "Features") and not flags:
            flags = set(v.split())
    if name is None:  # e.g. some aarch64 kernels: no "model name"
        for line in text.splitlines():
            if line.startswith(("Model", "Hardware")) and ":" in line:
                name = line.split(":", 1)[1].strip()
                break
    if name is None:
        name = platform.processor() or platform.machine()
    return name, [f for f in INT8_FLAGS if f in flags]


# --------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------


def session_options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def optimized_op_counts(int8: Path, threads: int, out_dir: Path) -> dict[str, int]:
    """Op types after ORT's graph optimizations (separate throwaway session)."""
    so = session_options(threads)
    opt_path = out_dir / "mobilenetv2_int8_qdq.optimized.onnx"
    so.optimized_model_filepath = str(opt_path)
    ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])
    counts = Counter(n.op_type for n in onnx.load(str(opt_path)).graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    ap.add_argument("--iterations", type=int, default=200, help="timed runs (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed runs first (default 20)")
    ap.add_argument("--json-out", type=Path, help="also write the JSON result to this file")
    ap.add_argument("--activation-type", choices=sorted(ACT_TYPES), default="u8",
                    help="activation type: u8 (QUInt8, default: ORT's x86-64 performance "
                         "path) or s8 (QInt8, ORT's general QDQ default); weights are "
                         "always QInt8 per-channel")
    ap.add_argument("--calibration-inputs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=20241126)
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("PROM_ONNX_CACHE", "/tmp/prom-onnx-bench")),
                    help="where the generated .onnx files go (default /tmp/prom-onnx-bench)")
    ap.add_argument("--rebuild", action="store_true", help="ignore cached models")
    args = ap.parse_args()
    if args.threads < 1 or args.iterations < 1 or args.warmup < 0:
        ap.error("--threads and --iterations must be >= 1, --warmup >= 0")

    fp32, int8, macs, params = build_models(args.cache_dir, args.seed, args.calibration_inputs,
                                            args.activation_type, args.rebuild)

    cpu, int8_flags = cpu_info()
    providers = ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(int8), session_options(args.threads), providers=providers)
    inp = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    x = np.random.default_rng(args.seed + 2).standard_normal(IN_SHAPE, dtype=np.float32)
    feed = {inp: x}

    # Sanity checks: output shape, and agreement with the float model on the same input.
    y_q = sess.run(out_names, feed)[0]
    if list(y_q.shape) != [1, NUM_CLASSES]:
        raise SystemExit(f"quantized model output shape {list(y_q.shape)} != [1, {NUM_CLASSES}]")
    if not np.all(np.isfinite(y_q)):
        raise SystemExit("quantized model produced non-finite outputs")
    fsess = ort.InferenceSession(str(fp32), session_options(args.threads), providers=providers)
    y_f = fsess.run(None, {"input": x})[0]
    del fsess
    cosine = float(np.dot(y_f.ravel(), y_q.ravel())
                   / (np.linalg.norm(y_f) * np.linalg.norm(y_q) + 1e-30))
    top1_agree = bool(int(np.argmax(y_f)) == int(np.argmax(y_q)))
    ops = optimized_op_counts(int8, args.threads, int8.parent)
    float_ops = {k: v for k, v in ops.items() if k in ("Conv", "Add", "Gemm", "MatMul")}
    log(f"output shape {list(y_q.shape)} ok; float vs int8 cosine {cosine:.4f}, "
        f"top-1 {'agrees' if top1_agree else 'differs'}; optimized graph ops: {ops}")
    if float_ops:
        log(f"WARNING: ORT left float compute ops in the int8 graph: {float_ops} "
            f"(not fully int8; try the other --activation-type)")

    log(f"timing: {args.warmup} warm-up + {args.iterations} timed runs, "
        f"{args.threads} thread(s), batch 1")
    for _ in range(args.warmup):
        sess.run(out_names, feed)
    lat = np.empty(args.iterations, dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(args.iterations):
        t0 = clock()
        sess.run(out_names, feed)
        lat[i] = (clock() - t0) / 1e6
    mean = float(lat.mean())

    result = {
        "runtime": "onnxruntime",
        "version": ort.__version__,
        "model": MODEL_NAME,
        "threads": args.threads,
        "iterations": args.iterations,
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 4),
            "p90": round(float(np.percentile(lat, 90)), 4),
            "p99": round(float(np.percentile(lat, 99)), 4),
            "mean": round(mean, 4),
            "min": round(float(lat.min()), 4),
        },
        "fps": round(1000.0 / mean, 2),
        "model_bytes": int8.stat().st_size,
        "cpu": cpu,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # Extra context (not part of the comparison schema's required keys).
        "warmup": args.warmup,
        "batch": 1,
        "activation_type": ACT_TYPES[args.activation_type].name,
        "activation_type_reason": ACT_REASON[args.activation_type],
        "weight_type": "QInt8 (per-channel, symmetric)",
        "quant_format": "QDQ",
        "calibration": f"MinMax on {args.calibration_inputs} random inputs",
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "execution_provider": sess.get_providers()[0],
        "inter_op_threads": 1,
        "optimized_graph_ops": ops,
        "float_model_bytes": fp32.stat().st_size,
        "macs": macs,
        "params": params,
        "sanity": {"output_shape": list(y_q.shape), "float_vs_int8_cosine": round(cosine, 5),
                   "float_vs_int8_top1_agree": top1_agree,
                   "fully_int8": not float_ops, "float_compute_ops": float_ops},
        "cpu_int8_flags": int8_flags,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnx_version": onnx.__version__,
        "numpy_version": np.__version__,
        "model_path": str(int8),
    }
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
        log(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
