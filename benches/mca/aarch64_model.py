#!/usr/bin/env python3
"""Static cycle model of the NEON pointwise kernels (see README.md next to this file).

Disassembles the release aarch64 build, finds the hot loops of the add-only ternary
pointwise kernel and of the int8-multiply baseline by symbol name and loop shape, measures
each loop body with llvm-mca for Cortex-A72 and Cortex-A76 (Neoverse-N1 model), and walks
every pointwise layer of a MobileNetV2 .prom model with the real per-layer work.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE_PW_RS = ROOT / "kernels/src/aarch64/table_pw.rs"
INT8_PW_RS = ROOT / "kernels/src/aarch64/int8_pw.rs"
INT8_DOT_RS = ROOT / "kernels/src/aarch64/int8_dot.rs"


class ModelError(Exception):
    """The code or model no longer has the shape this script expects."""


def fail(msg: str) -> None:
    raise ModelError(msg)


# --------------------------------------------------------------------------------------
# Cores. Every number here is documented in README.md ("Core parameters").


@dataclass(frozen=True)
class Core:
    name: str
    mcpu: str
    # llvm-mca -dispatch (micro-ops per cycle); None keeps the LLVM model's own width.
    dispatch: int | None
    # Instructions decoded per cycle: a floor on cycles per iteration that llvm-mca's
    # scheduling model does not enforce by itself.
    decode: int
    # Cycles lost per branch misprediction.
    mispredict: int
    # Whether the core has the dot-product extension (the int8 baseline then uses sdot).
    dotprod: bool


CORES = [
    # LLVM's cortex-a72 is the Cortex-A57 model (IssueWidth 3 micro-ops); the A72 decodes
    # 3 instructions and dispatches up to 5 micro-ops per cycle.
    Core("A72", "cortex-a72", dispatch=5, decode=3, mispredict=15, dotprod=False),
    # Cortex-A76 (Pi 5): Neoverse-N1 model (same core design); 4-wide decode, 8-wide dispatch.
    Core("A76", "neoverse-n1", dispatch=8, decode=4, mispredict=11, dotprod=True),
]

# Estimated cost of one memcpy of k bytes (the int8 baseline copies 4 input rows per tile
# through the libc memcpy, whose code is not in our binary): call and return overhead plus
# one 16-byte load/store pair per cycle.
MEMCPY_CALL_CYCLES = 12
MEMCPY_BYTES_PER_CYCLE = 16

# --------------------------------------------------------------------------------------
# Disassembly


@dataclass
class Insn:
    addr: int
    mnem: str
    ops: str
    target: int | None  # branch target, if a direct branch

    @property
    def text(self) -> str:
        return f"{self.mnem} {self.ops}".strip()


@dataclass
class Func:
    name: str
    start: int
    insns: list[Insn] = field(default_factory=list)


BRANCH_RE = re.compile(r"^(b|b\.\w+|bl|cbz|cbnz|tbz|tbnz)$")


def run_tool(args: list[str], stdin: str | None = None) -> str:
    try:
        res = subprocess.run(
            args, input=stdin, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        fail(f"tool not found: {args[0]}")
    if res.returncode != 0:
        fail(f"{' '.join(args[:3])} ... failed:\n{res.stderr.strip()}")
    return res.stdout


def find_functions(
    binary: Path, nm: str, patterns: dict[str, str]
) -> dict[str, tuple[int, int]]:
    """Maps each key of `patterns` to (start, end) of the one function whose demangled
    name matches the regex; the end is the next symbol's address."""
    out = run_tool([nm, "-n", "--defined-only", "--demangle", str(binary)])
    syms: list[tuple[int, str]] = []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            syms.append((int(parts[0], 16), parts[2]))
    found: dict[str, tuple[int, int]] = {}
    for key, pat in patterns.items():
        hits = [i for i, (_, name) in enumerate(syms) if re.search(pat, name)]
        if len(hits) != 1:
            names = [syms[i][1] for i in hits]
            fail(
                f"expected exactly one function matching {pat!r}, found {len(hits)}: {names}"
            )
        i = hits[0]
        end = next((a for a, _ in syms[i + 1 :] if a > syms[i][0]), None)
        if end is None:
            fail(f"no symbol after {syms[i][1]}")
        found[key] = (syms[i][0], end)
    return found


def disassemble(binary: Path, objdump: str, start: int, end: int, name: str) -> Func:
    out = run_tool(
        [
            objdump,
            "-d",
            "--no-show-raw-insn",
            f"--start-address={start:#x}",
            f"--stop-address={end:#x}",
            str(binary),
        ]
    )
    func = Func(name, start)
    for line in out.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        mnem = m.group(2)
        ops = re.sub(r"\s*//.*$", "", m.group(3)).strip()
        target = None
        if BRANCH_RE.match(mnem):
            t = re.search(r"\b0x([0-9a-f]+)\b(?:\s+<[^>]*>)?\s*$", ops)
            if t:
                target = int(t.group(1), 16)
                ops = (
                    ops[: t.start()].rstrip().rstrip(",")
                )  # keep the register operands only
        func.insns.append(Insn(addr, mnem, ops, target))
    if not func.insns:
        fail(f"{name}: no instructions disassembled")
    return func


def backward_loops(func: Func) -> list[tuple[int, int]]:
    """(first, last) instruction indices of every backward branch's range, innermost first."""
    idx = {ins.addr: i for i, ins in enumerate(func.insns)}
    loops = []
    for i, ins in enumerate(func.insns):
        backward = ins.target is not None and ins.target <= ins.addr
        if backward and ins.mnem != "bl" and ins.target in idx:
            loops.append((idx[ins.target], i))
    return sorted(set(loops), key=lambda r: r[1] - r[0])


def count(body: list[Insn], mnem_re: str, ops_re: str = "") -> int:
    return sum(
        1
        for x in body
        if re.fullmatch(mnem_re, x.mnem) and re.search(ops_re, x.ops or "")
    )


def pick_loop(func: Func, what: str, pred) -> list[Insn]:
    """The innermost backward-branch loop whose body satisfies `pred`; exactly one shape."""
    hits = [
        func.insns[a : b + 1]
        for a, b in backward_loops(func)
        if pred(func.insns[a : b + 1])
    ]
    if not hits:
        fail(
            f"{func.name}: no loop found for {what}: the code changed, update the model"
        )
    return hits[0]


def basic_blocks(insns: list[Insn]) -> list[list[Insn]]:
    """Splits a straight range of instructions at branches and at branch targets."""
    targets = {x.target for x in insns if x.target is not None}
    blocks: list[list[Insn]] = []
    cur: list[Insn] = []
    for x in insns:
        if x.addr in targets and cur:
            blocks.append(cur)
            cur = []
        cur.append(x)
        if x.target is not None or x.mnem == "ret":
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


# --------------------------------------------------------------------------------------
# llvm-mca


class Mca:
    def __init__(self, exe: str, iterations: int) -> None:
        self.exe = exe
        self.iterations = iterations
        self.cache: dict[tuple[str, str], float] = {}

    def cycles(self, core: Core, body: list[Insn]) -> float:
        """Steady-state cycles per iteration of `body`, with the core's decode floor."""
        # Branch targets are irrelevant to llvm-mca (it assumes every branch predicted);
        # they only need to assemble.
        lines = [".Lbody:"]
        for x in body:
            if x.target is not None and x.mnem != "bl":
                lines.append(f"{x.mnem} {x.ops + ', ' if x.ops else ''}.Lbody")
            elif x.mnem == "bl":
                fail("a call inside a modelled block")
            else:
                lines.append(x.text)
        asm = "\n".join(lines) + "\n"
        key = (core.mcpu, asm)
        if key not in self.cache:
            args = [
                self.exe,
                "-mtriple=aarch64-linux-gnu",
                f"-mcpu={core.mcpu}",
                f"-iterations={self.iterations}",
            ]
            if core.dispatch:
                args.append(f"-dispatch={core.dispatch}")
            out = run_tool(args, stdin=asm)
            m = re.search(r"Total Cycles:\s+(\d+)", out)
            it = re.search(r"Iterations:\s+(\d+)", out)
            if not m or not it:
                fail("unexpected llvm-mca output")
            per_iter = int(m.group(1)) / int(it.group(1))
            self.cache[key] = max(per_iter, len(body) / core.decode)
        return self.cache[key]


# --------------------------------------------------------------------------------------
# Kernel code: which pieces, found by name and shape


def is_vadd(x: Insn) -> bool:
    return x.mnem == "add" and ".8h" in x.ops


def is_vsub(x: Insn) -> bool:
    return x.mnem == "sub" and ".8h" in x.ops


def ldr_q(body: list[Insn]) -> int:
    return sum(1 for x in body if x.mnem == "ldr" and re.match(r"q\d+,", x.ops))


@dataclass
class Pieces:
    """Instruction sequences whose per-execution cycles the layer walk multiplies out."""

    seqs: dict[str, list[Insn]]


def ternary_pieces(f: dict[str, Func]) -> Pieces:
    acc = f["accumulate"]
    # Row-add loops: four offsets from one 64-bit load, eight `ldr q`, eight int16 adds
    # (plus list) or four adds and four subtracts (minus list).
    plus = pick_loop(
        acc,
        "plus-list loop (8 ldr q, 8 add .8h, ldr x post-inc)",
        lambda b: (
            ldr_q(b) == 8 and sum(map(is_vadd, b)) == 8 and not any(map(is_vsub, b))
        ),
    )
    minus = pick_loop(
        acc,
        "minus-list loop (8 ldr q, 4 sub .8h)",
        lambda b: ldr_q(b) == 8 and sum(map(is_vsub, b)) == 4,
    )
    for body in (plus, minus):
        if not any(
            x.mnem == "ldr" and re.match(r"x\d+, \[x\d+\], #0x8", x.ops) for x in body
        ):
            fail(
                "list loop no longer reads four offsets with one post-incremented ldr x"
            )
    loop_addrs = {x.addr for x in plus + minus}
    blocks = [
        b for b in basic_blocks(acc.insns) if not any(x.addr in loop_addrs for x in b)
    ]
    # Odd-pair tails: one 32-bit offset load, four `ldr q`, four adds or four subtracts.
    tails = [b for b in blocks if ldr_q(b) == 4 and len(b) <= 12]
    tail_plus = [b for b in tails if sum(map(is_vadd, b)) == 4]
    tail_minus = [b for b in tails if sum(map(is_vsub, b)) == 4]
    # Accumulating into int32 (not the first chunk): a block that loads the accumulators.
    acc_add = [
        b
        for b in blocks
        if count(b, "ldp", r"^q") == 2 and count(b, "add", r"\.4s") == 4
    ]
    if len(tail_plus) != 1 or len(tail_minus) != 1 or len(acc_add) != 1:
        fail(
            "ternary_accumulate__neon: expected one odd plus tail, one odd minus tail and one "
            f"int32 accumulate block; found {len(tail_plus)}, {len(tail_minus)}, {len(acc_add)}"
        )
    special = {x.addr for b in tail_plus + tail_minus + acc_add for x in b}
    # Everything else except the function's entry and return runs once per output.
    entry_exit = {acc.insns[0].addr, acc.insns[1].addr, acc.insns[2].addr}
    entry_exit |= {x.addr for x in acc.insns[-2:]}
    fixed = [
        x
        for b in blocks
        for x in b
        if x.addr not in special and x.addr not in entry_exit
    ]
    if count(fixed, "sshll2?") != 4 or count(fixed, "stp", r"^q") != 2:
        fail(
            "per-output epilogue no longer widens with 4 sshll and stores with 2 stp q"
        )

    t40 = f["lut40"]
    build40 = pick_loop(
        t40, "lut40 table build loop (one group per iteration)", lambda b: len(b) > 100
    )
    stores40 = count(build40, "str", r"^q") + 2 * count(build40, "stp", r"^q")
    if stores40 != 2 * 40:
        fail(
            f"lut40 build stores {stores40} half rows per group, expected 80 (40 rows x 2)"
        )
    t16 = f["lut16"]
    build16 = pick_loop(t16, "lut16 table build loop", lambda b: len(b) > 30)
    stores16 = count(build16, "str", r"^q") + 2 * count(build16, "stp", r"^q")
    if stores16 != 2 * 11:
        fail(
            f"lut16 build stores {stores16} half rows per group, expected 22 (11 rows x 2)"
        )

    tr = f["transpose"]
    tr16 = pick_loop(
        tr,
        "16-channel transpose loop",
        lambda b: count(b, "trn[12]") >= 48 and len(b) > 100,
    )
    # The 8-channel step: one straight block of two half transposes (LLVM folds the zero
    # upper halves, so fewer trn) and 16 widening moves.
    tr16_addrs = {x.addr for x in tr16}
    tr8 = [
        b
        for b in basic_blocks(tr.insns)
        if count(b, "trn[12]") >= 24
        and count(b, "sshll2?") == 16
        and not any(x.addr in tr16_addrs for x in b)
    ]
    if len(tr8) != 1:
        fail(
            f"transpose_tile: expected one straight 8-channel transpose block, found {len(tr8)}"
        )
    tr_pix = pick_loop(
        tr,
        "scalar pixel loop of partial tiles (ldrsb, strh)",
        lambda b: count(b, "ldrsb") == 1,
    )
    tr_pad = pick_loop(
        tr,
        "padded-channel loop (two q stores of zero)",
        lambda b: (
            count(b, "str", r"^q") == 2 and len(b) < 16 and count(b, "ldrsb") == 0
        ),
    )

    run = f["run"]
    req_short = pick_loop(
        f["requantize"],
        "short-form requantization loop (mla .4s, sshl .4s)",
        lambda b: count(b, "mla", r"\.4s") == 4 and count(b, "sshl", r"\.4s") == 4,
    )
    store = pick_loop(
        run,
        "output transpose loop (trn, st)",
        lambda b: count(b, "trn[12]") >= 48 and count(b, "str?", r"^[qd]") >= 8,
    )
    return Pieces(
        {
            "plus": plus,
            "minus": minus,
            "tail_plus": tail_plus[0],
            "tail_minus": tail_minus[0],
            "acc_add": acc_add[0],
            "out_fixed": fixed,
            "build40": build40,
            "build16": build16,
            "tr16": tr16,
            "tr8": tr8[0],
            "tr_pix": tr_pix,
            "tr_pad": tr_pad,
            "req_short": req_short,
            "store16": store,
        }
    )


def loop_around(fn: Func, inner: list[Insn], what: str) -> list[Insn]:
    """The loop over channel blocks around a MAC loop: of the backward branches that
    enclose it, the largest range sharing the innermost one's head."""
    enclosing = [
        fn.insns[a : b + 1]
        for a, b in backward_loops(fn)
        if fn.insns[a].addr < inner[0].addr and fn.insns[b].addr > inner[-1].addr
    ]
    if not enclosing:
        fail(f"{what}: no loop over channel blocks around the MAC loop")
    head = enclosing[0][0].addr
    return max((b for b in enclosing if b[0].addr == head), key=len)


def int8_pieces(f: dict[str, Func]) -> Pieces:
    fn = f["int8"]
    inner = pick_loop(
        fn,
        "int8 MAC loop (16 k x 4 pixels x 4 channels: 32 smull/smull2, 32 sadalp)",
        lambda b: count(b, "smull2?", r"\.8h") == 32 and count(b, "sadalp") == 32,
    )
    block_loop = loop_around(fn, inner, "int8_pointwise")
    inner_addrs = {x.addr for x in inner}
    fixed: list[Insn] = []
    half: list[Insn] | None = None
    for b in basic_blocks(block_loop):
        if any(x.addr in inner_addrs for x in b):
            continue
        if any(x.mnem == "bl" for x in b):
            continue  # partial-width stores through memcpy: n % 4 != 0 only
        if count(b, "smull", r"\.8h") == 16 and count(b, "sadalp") == 16:
            if half is not None:
                fail("int8_pointwise: two half-step (8 k) blocks")
            half = b
            continue
        if count(b, "movi") == 16 and b[-1].mnem == "b":
            continue  # the k < 16 entry, which jumps straight to the half step
        fixed.extend(b)
    if half is None:
        fail("int8_pointwise: no half-step (8 k) block")
    if count(fixed, "smull2?", r"\.2d") < 8 or count(fixed, "movi") != 16:
        fail("int8_pointwise: per-block epilogue lost its requantization or zeroing")
    return Pieces({"mac16": inner, "half8": half, "block_fixed": fixed})


def int8_dot_pieces(f: dict[str, Func]) -> Pieces:
    """The sdot baseline (`int8_dot::tiles`, the micro-kernel inlined): the MAC loop and
    the rest of the block loop (accumulator zeroing, requantization, row stores)."""
    fn = f["int8dot"]
    inner = pick_loop(
        fn,
        "sdot MAC loop (16 k x 4 pixels x 16 channels: 64 sdot, 4 + 16 vector loads)",
        lambda b: (
            count(b, "sdot") == 64
            and count(b, "ldr", r"^q") + 2 * count(b, "ldp", r"^q") == 20
        ),
    )
    block_loop = loop_around(fn, inner, "int8_dot::tiles")
    inner_addrs = {x.addr for x in inner}
    fixed: list[Insn] = []
    for b in basic_blocks(block_loop):
        if any(x.addr in inner_addrs for x in b) or any(x.mnem == "bl" for x in b):
            continue  # the MAC loop; partial-width stores through memcpy (n % 16 != 0)
        fixed.extend(b)
    if count(fixed, "movi") != 16 or count(fixed, "smull2?", r"\.2d") < 16:
        fail("int8_dot::tiles: per-block code lost its zeroing or requantization")
    return Pieces({"mac16": inner, "block_fixed": fixed})


# --------------------------------------------------------------------------------------
# Source constants the walk needs (read, not copied, so that a change shows up)


def rust_const(path: Path, name: str) -> int:
    text = path.read_text()
    m = re.search(rf"const {name}: usize = ([0-9_]+);", text)
    if not m:
        fail(
            f"{path.name}: constant {name} not found (the kernel changed: update the model)"
        )
    return int(m.group(1).replace("_", ""))


# --------------------------------------------------------------------------------------
# Model file


@dataclass
class Layer:
    index: int
    pixels: int
    k: int
    n: int
    codes: list[list[int]]  # n rows of groups(k) four-per-byte codes


def read_pointwise_layers(path: Path) -> list[Layer]:
    data = path.read_bytes()
    if data[:8] != b"PROMMDL\0":
        fail(f"{path}: not a .prom file")
    sections = {}
    for i in range(struct.unpack_from("<I", data, 16)[0]):
        kind, _, off, length = struct.unpack_from("<IIQQ", data, 64 + 32 * i)
        sections[kind] = (off, length)
    g_off, _ = sections[3]
    w_off, _ = sections[4]
    tensor_count, op_count = struct.unpack_from("<II", data, g_off + 16)
    tensors = []
    for t in range(tensor_count):
        h, w, c = struct.unpack_from("<III", data, g_off + 32 + 24 * t)
        tensors.append((h, w, c))
    ops_at = g_off + 32 + 24 * tensor_count
    layers = []
    for i in range(op_count):
        rec = ops_at + 128 * i
        kind = data[rec]
        if kind == 7:
            fail(
                "int8 pointwise layers in the model: this walk models ternary models only"
            )
        if kind != 3:
            continue
        x = struct.unpack_from("<I", data, rec + 4)[0]
        y = struct.unpack_from("<I", data, rec + 12)[0]
        w_blob, w_len = struct.unpack_from("<QQ", data, rec + 32)
        h, w, k = tensors[x]
        n = tensors[y][2]
        per_row = math.ceil(k / 5)
        if w_len != n * per_row:
            fail(f"op {i}: ternary blob length {w_len} != {n} x ceil({k}/5)")
        blob = data[w_off + w_blob : w_off + w_blob + w_len]
        codes = []
        for c in range(n):
            trits = []
            for b in blob[c * per_row : (c + 1) * per_row]:
                for _ in range(5):
                    trits.append(b % 3)  # digit = weight + 1
                    b //= 3
            trits = trits[:k] + [1] * (-k % 4)
            codes.append(
                [
                    trits[j] + 3 * trits[j + 1] + 9 * trits[j + 2] + 27 * trits[j + 3]
                    for j in range(0, len(trits), 4)
                ]
            )
        layers.append(Layer(i, h * w, k, n, codes))
    if not layers:
        fail(f"{path}: no ternary pointwise layers")
    return layers


# --------------------------------------------------------------------------------------
# Layer walk


@dataclass
class LayerCost:
    cycles: float = 0.0
    mispredicts: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)

    def add(self, part: str, cycles: float) -> None:
        self.cycles += cycles
        self.parts[part] = self.parts.get(part, 0.0) + cycles


def ternary_layer(
    layer: Layer, core: Core, mca: Mca, p: Pieces, cfg: dict[str, int]
) -> LayerCost:
    def c(name: str) -> float:
        return mca.cycles(core, p.seqs[name])

    k, n, pixels = layer.k, layer.n, layer.pixels
    tile = cfg["TILE"]
    lut16 = n <= cfg["LUT16_MAX_N"]
    chunk = cfg["LUT16_CHUNK"] if lut16 else cfg["LUT40_CHUNK"]
    g = len(layer.codes[0])
    full_tiles, rest = divmod(pixels, tile)
    tiles = full_tiles + (1 if rest else 0)
    cost = LayerCost()
    for gs in range(0, g, chunk):
        glen = min(chunk, g - gs)
        channels = min(4 * glen, k - 4 * gs)
        # Lists as pack_lists writes them: entries per output, padded to even, in pairs,
        # the records of a chunk sorted by their pair counts.
        counts: list[tuple[int, int]] = []
        for row in layer.codes:
            plus = minus = 0
            for code in row[gs : gs + glen]:
                if lut16:
                    # Subset rows: a plus row if any weight is +1, a minus row if any is -1.
                    digits = (code % 3, code // 3 % 3, code // 9 % 3, code // 27)
                    plus += 2 in digits
                    minus += 0 in digits
                else:
                    plus += code > 40
                    minus += code < 40
            counts.append(((plus + 1) // 2, (minus + 1) // 2))
        per_output = 0.0
        mispredicts = 0
        prev: tuple[int, int] | None = None
        for pp, mp in sorted(counts) if cfg["SORTED"] else counts:
            per_output += (
                pp // 2 * c("plus")
                + (pp & 1) * c("tail_plus")
                + mp // 2 * c("minus")
                + (mp & 1) * c("tail_minus")
            )
            # Data-dependent branches (list skips, loop exits, odd tails): counted as one
            # misprediction per list whose pair count differs from the previous output's.
            if prev is not None:
                mispredicts += (pp != prev[0]) + (mp != prev[1])
            prev = (pp, mp)
        fixed = n * (c("out_fixed") + (0 if gs == 0 else c("acc_add")))
        build = glen * c("build16" if lut16 else "build40")
        tr_full = channels // 16 * c("tr16") + (channels % 16 >= 8) * c("tr8")
        if channels % 8:
            fail(
                f"layer {layer.index}: k={k} not a multiple of 8 (scalar transpose tail)"
            )
        pad = 4 * glen - channels
        cost.add("lists", tiles * per_output)
        cost.add("per_output", tiles * fixed)
        cost.add("tables", tiles * build)
        cost.add("transpose", full_tiles * (tr_full + pad * c("tr_pad")))
        if rest:
            # Partial tiles take the scalar path for every channel.
            per_ch = rest * c("tr_pix") + c("tr_pad")
            cost.add("transpose", channels * per_ch + pad * c("tr_pad"))
        cost.mispredicts += tiles * mispredicts
    cost.add("requant", tiles * n * c("req_short"))
    cost.add("store", tiles * (n // 16) * c("store16"))
    cost.add("mispredict", cost.mispredicts * core.mispredict)
    return cost


def int8_layer(layer: Layer, core: Core, mca: Mca, p: Pieces, nr: int = 4) -> LayerCost:
    """An int8 GEMM kernel: 4-pixel tiles x `nr`-channel blocks, 16 input channels per MAC
    loop iteration. The `smull` kernel (`nr` 4) pads `k` to 8 and finishes an odd 8 with
    its half step; the sdot kernel (`nr` 16, no half step) pads `k` to 16."""

    def c(name: str) -> float:
        return mca.cycles(core, p.seqs[name])

    k, n, pixels = layer.k, layer.n, layer.pixels
    half = "half8" in p.seqs
    kp = math.ceil(k / (8 if half else 16)) * (8 if half else 16)
    tiles = math.ceil(pixels / 4)
    blocks = math.ceil(n / nr)
    steps = kp // 16 * c("mac16") + (kp % 16 != 0) * (c("half8") if half else 0.0)
    cost = LayerCost()
    cost.add("mac", tiles * blocks * steps)
    cost.add("per_block", tiles * blocks * c("block_fixed"))
    cost.add("copy_in", tiles * 4 * (MEMCPY_CALL_CYCLES + k / MEMCPY_BYTES_PER_CYCLE))
    return cost


# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--binary",
        type=Path,
        default=ROOT / "target/aarch64-unknown-linux-gnu/release/promctl",
        help="release aarch64 build with symbols (default: %(default)s)",
    )
    ap.add_argument(
        "--model", type=Path, help=".prom model (default: promctl synth, 224)"
    )
    ap.add_argument("--promctl", type=Path, default=ROOT / "target/release/promctl")
    ap.add_argument("--llvm-mca", default="llvm-mca-19")
    ap.add_argument("--objdump", default="llvm-objdump-19")
    ap.add_argument("--nm", default="llvm-nm-19")
    ap.add_argument("--iterations", type=int, default=300, help="llvm-mca iterations")
    ap.add_argument("--json", type=Path, help="also write all figures as JSON here")
    ap.add_argument("--show-loops", action="store_true", help="print the modelled code")
    args = ap.parse_args()

    if not args.binary.exists():
        fail(
            f"{args.binary} not found: build it with "
            "`cargo build --release --target aarch64-unknown-linux-gnu -p prom-daemon --bin promctl`"
        )
    patterns = {
        "accumulate": r"aarch64::table_pw::ternary_accumulate__neon::",
        "lut40": r"aarch64::table_pw::ternary_pw_16x4c_lut40__neon_mac::",
        "lut16": r"aarch64::table_pw::ternary_pw_16x4c_lut16__neon_mac::",
        "transpose": r"aarch64::table_pw::transpose_tile::",
        "run": r"aarch64::table_pw::run::",
        "requantize": r"aarch64::table_pw::requantize_tile::",
        "int8": r"aarch64::int8_pointwise::",
        "int8dot": r"aarch64::int8_dot::tiles::",
    }
    spans = find_functions(args.binary, args.nm, patterns)
    funcs = {
        key: disassemble(args.binary, args.objdump, a, b, patterns[key])
        for key, (a, b) in spans.items()
    }
    tern = ternary_pieces(funcs)
    int8 = int8_pieces(funcs)
    int8dot = int8_dot_pieces(funcs)
    if rust_const(INT8_DOT_RS, "NR") != 16 or rust_const(INT8_DOT_RS, "MR") != 4:
        fail("int8_dot.rs: the micro-tile is no longer 4x16; update int8_dot_layer")
    cfg = {
        name: rust_const(TABLE_PW_RS, name)
        for name in ("TILE", "LUT40_CHUNK", "LUT16_CHUNK", "LUT16_MAX_N")
    }
    # pack_lists orders each chunk's records by their list lengths (or, without this line,
    # by channel); the misprediction estimate follows the order the kernel runs.
    cfg["SORTED"] = int("records.sort_by_key(|r| r.count)" in TABLE_PW_RS.read_text())
    if rust_const(INT8_PW_RS, "NR") != 4 or rust_const(INT8_PW_RS, "MR") != 4:
        fail("int8_pw.rs: the micro-tile is no longer 4x4; update int8_layer")

    if args.model:
        layers = read_pointwise_layers(args.model)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m224.prom"
            run_tool(
                [str(args.promctl), "synth", "--resolution", "224", "-o", str(path)]
            )
            layers = read_pointwise_layers(path)

    mca = Mca(args.llvm_mca, args.iterations)
    if args.show_loops:
        for kernel, pieces in (("ternary", tern), ("int8", int8), ("int8dot", int8dot)):
            cores = [cr for cr in CORES if cr.dotprod or kernel != "int8dot"]
            for name, seq in pieces.seqs.items():
                cyc = ", ".join(f"{cr.name} {mca.cycles(cr, seq):.2f}" for cr in cores)
                print(f"== {kernel}/{name}: {len(seq)} instructions, cycles/iter {cyc}")
                for x in seq:
                    print(f"   {x.addr:8x}  {x.text}")
        print()

    report: dict = {"cores": {}, "pieces": {}}
    for cr in CORES:
        # sdot exists only on dot-product cores (llvm-mca refuses it for the A72).
        kernels = [("ternary", tern), ("int8", int8)] + [
            ("int8dot", int8dot)
        ] * cr.dotprod
        report["pieces"][cr.name] = {
            f"{kern}/{name}": round(mca.cycles(cr, seq), 3)
            for kern, pieces in kernels
            for name, seq in pieces.seqs.items()
        }
    print("Loop bodies, cycles per iteration (llvm-mca with the decode floor):")
    for name in ("plus", "minus", "out_fixed", "build40", "build16", "req_short"):
        vals = "  ".join(
            f"{cr.name} {report['pieces'][cr.name]['ternary/' + name]:6.2f}"
            for cr in CORES
        )
        print(f"  ternary/{name:<11} {vals}")
    for name in ("mac16", "block_fixed"):
        vals = "  ".join(
            f"{cr.name} {report['pieces'][cr.name]['int8/' + name]:6.2f}"
            for cr in CORES
        )
        print(f"  int8/{name:<14} {vals}")
    for name in ("mac16", "block_fixed"):
        vals = "  ".join(
            f"{cr.name} {report['pieces'][cr.name]['int8dot/' + name]:6.2f}"
            for cr in CORES
            if cr.dotprod
        )
        print(f"  int8dot/{name:<11} {vals}")
    print()

    for cr in CORES:
        rows = []
        tot = {"ours": 0.0, "ours_mp": 0.0, "int8": 0.0, "int8dot": 0.0, "macs": 0}
        print(
            f"== {cr.name} (llvm-mca -mcpu={cr.mcpu}, decode {cr.decode}/cycle, "
            f"dispatch {cr.dispatch}, mispredict {cr.mispredict} cycles)"
        )
        print(
            f"{'op':>3} {'pixels':>6} {'k':>5} {'n':>5} {'scheme':>6} {'MMACs':>7} "
            f"{'ours Mcyc':>9} {'+mispr':>7} {'MAC/c':>6} {'int8 Mcyc':>9} {'MAC/c':>6}"
            + (f" {'sdot Mcyc':>9} {'MAC/c':>6}" if cr.dotprod else "")
        )
        for layer in layers:
            t = ternary_layer(layer, cr, mca, tern, cfg)
            i = int8_layer(layer, cr, mca, int8)
            dot = int8_layer(layer, cr, mca, int8dot, nr=16) if cr.dotprod else None
            macs = layer.pixels * layer.k * layer.n
            no_mp = t.cycles - t.parts["mispredict"]
            scheme = "lut16" if layer.n <= cfg["LUT16_MAX_N"] else "lut40"
            print(
                f"{layer.index:>3} {layer.pixels:>6} {layer.k:>5} {layer.n:>5} {scheme:>6} "
                f"{macs / 1e6:7.2f} {no_mp / 1e6:9.3f} {t.cycles / 1e6:7.3f} "
                f"{macs / t.cycles:6.1f} {i.cycles / 1e6:9.3f} {macs / i.cycles:6.1f}"
                + (f" {dot.cycles / 1e6:9.3f} {macs / dot.cycles:6.1f}" if dot else "")
            )
            tot["ours"] += no_mp
            tot["ours_mp"] += t.cycles
            tot["int8"] += i.cycles
            tot["int8dot"] += dot.cycles if dot else 0.0
            tot["macs"] += macs
            rows.append(
                {
                    "op": layer.index,
                    "pixels": layer.pixels,
                    "k": layer.k,
                    "n": layer.n,
                    "scheme": scheme,
                    "macs": macs,
                    "ternary_cycles": no_mp,
                    "ternary_cycles_with_mispredicts": t.cycles,
                    "mispredicts": t.mispredicts,
                    "ternary_parts": t.parts,
                    "int8_cycles": i.cycles,
                    "int8_parts": i.parts,
                    **(
                        {"int8_sdot_cycles": dot.cycles, "int8_sdot_parts": dot.parts}
                        if dot
                        else {}
                    ),
                }
            )
        print(
            f"total ({len(layers)} layers, {tot['macs'] / 1e6:.0f} M MACs): "
            f"add-only {tot['ours'] / 1e6:.1f} M cycles, {tot['ours_mp'] / 1e6:.1f} M with "
            f"mispredicts ({tot['macs'] / tot['ours_mp']:.1f} MACs/cycle); int8 baseline "
            f"{tot['int8'] / 1e6:.1f} M cycles ({tot['macs'] / tot['int8']:.1f} MACs/cycle)"
            + (
                f"; sdot baseline {tot['int8dot'] / 1e6:.1f} M cycles "
                f"({tot['macs'] / tot['int8dot']:.1f} MACs/cycle)"
                if cr.dotprod
                else ""
            )
        )
        print()
        report["cores"][cr.name] = {"layers": rows, "totals": tot}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ModelError as e:
        print(f"aarch64_model: ERROR: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(1)
