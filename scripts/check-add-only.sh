#!/usr/bin/env bash
# check-add-only.sh: prove from the machine code that the ternary (add-only) kernels multiply nothing.
#
# DESIGN.md section 4: the ternary MAC loop uses loads, adds/subs, logic, shifts and
# shuffle/sign ops only, and every add-only ternary function's symbol contains `ternary`
# (the module path counts). This script builds prom-kernels in release mode for x86_64 and
# aarch64, disassembles it (objdump -d --no-show-raw-insn -C) and inspects every function
# whose demangled symbol contains `ternary`.
#
# Usage:
#   scripts/check-add-only.sh                      build and check x86_64 and aarch64
#   scripts/check-add-only.sh --target TRIPLE ...  build and check only these targets
#   scripts/check-add-only.sh --no-build           check the rlibs of the last build
#   scripts/check-add-only.sh --object FILE [--arch x86_64|aarch64]
#                                                  check a given object, archive or binary
#                                                  instead of building (repeatable; the
#                                                  architecture is read from the ELF header)
#   scripts/check-add-only.sh --only REGEX ...     only functions whose demangled name also
#                                                  matches REGEX (ERE), e.g. '^<?prom_kernels::'
#                                                  to skip test code in a test binary
#   scripts/check-add-only.sh --strict ...         no exemptions at all (see below)
#
# Policy (default):
#   * Functions that contain `ternary` only through the crate's API or format names and are
#     not MAC code are exempt; they are listed in EXEMPT below with the reason, and printed.
#     Anything else whose symbol contains `ternary` is checked: new functions fail closed.
#   * In a checked function, these multiplies are violations wherever they are:
#     - vector, floating-point, dot-product, carry-less multiplies (x86: pmaddubsw, pmaddwd,
#       pmuldq, pmuludq, pmulld, pmullw, pmulhw, pmulhuw, pmulhrsw and v-forms, vpdpbusd(s),
#       vpdpwssd(s), mul*ps/pd/ss/sd, FMA; ARM: vector mul/mla/mls, smull(2), umull(2),
#       smlal(2), smlsl, umlal, sqdmulh, sqrdmulh, sqdmull, sdot, udot, usdot, smmla, ummla,
#       fmul, fmla, pmul, pmull, SVE forms);
#     - integer multiplies narrower than 64 bits (x86 imul/mul on 32/16/8-bit registers;
#       ARM mul/madd/msub on w registers, smaddl/umaddl/smsubl/smull/umull): the width of
#       int8 x int8 -> int32 MAC arithmetic.
#   * A 64-bit integer multiply (x86 imul/mul/mulx on 64-bit registers; ARM mul/madd/msub/
#     smulh/umulh on x registers) is usize address or size arithmetic (`row * groups`, tile
#     offsets); int8 MAC arithmetic never needs 64 bits. It is allowed outside innermost
#     loops (per call, per output row, per tile), like the one requantization multiply per
#     output the design allows; inside an innermost loop it runs per MAC step and is a
#     violation. Loops come from the disassembled control-flow graph (dominators, natural
#     loops), not from the code layout. Allowed multiplies are printed as notes.
#   --strict: every multiply mnemonic in every function containing `ternary` is a violation,
#     exemptions included (the literal rule; today's code does not pass it).
#   Mnemonics are matched whole (the first token after the address, after x86 prefixes such
#   as `lock` or `{vex}`), so `mla` never matches `smlal` and `mul` never matches `umull`.
#   The script fails if an architecture has zero checked ternary functions.
#
# Why LTO is off for the build here: with the workspace's `lto = "thin"`, cargo compiles the
# rlib with -C linker-plugin-lto, i.e. LLVM bitcode that objdump cannot read. The check builds
# the same release profile with CARGO_PROFILE_RELEASE_LTO=false (separate artifact hash, so
# it does not disturb the normal release build); crate-local optimisation is unchanged and the
# MAC kernels are #[inline(never)] leaves. A final LTO-linked binary (a test binary, the
# daemon) can be checked as well with --object.
#
# Tools: objdump (x86_64), aarch64-linux-gnu-objdump (aarch64), readelf, awk (mawk is fine).
set -euo pipefail

# Anchored regexes over demangled names. Keep this list short and give each a reason.
EXEMPT=(
  # Weight format: pack/unpack/validate/Display of the packed trits; load-time, not MAC code.
  '^<?prom_kernels::ternary::'
  # Safe API entry point: shape and length checks (pixels * k, n * groups(k)), then dispatch.
  '^prom_kernels::Kernels::ternary_pointwise$'
  # Drivers: call the #[inline(never)] MAC kernel, then requantize each output (the one
  # multiply per output the design allows).
  '^prom_kernels::scalar::ternary_pointwise$'
  # Load-time weight preparation (entry point): validates the codes, then dispatches to the
  # tier's list builder (named without `ternary`).
  '^prom_kernels::Kernels::prepare_ternary$'
)

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

die() { echo "check-add-only: error: $*" >&2; exit 2; }

abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

strict=0
only=""
build=1
targets=()
objects=()
object_arch=""
while [ $# -gt 0 ]; do
  case "$1" in
    --strict) strict=1 ;;
    --only) [ $# -ge 2 ] || die "--only needs a regex"; only="$2"; shift ;;
    --only=*) only="${1#*=}" ;;
    --no-build) build=0 ;;
    --target) [ $# -ge 2 ] || die "--target needs a triple"; targets+=("$2"); shift ;;
    --target=*) targets+=("${1#*=}") ;;
    --object) [ $# -ge 2 ] || die "--object needs a file"; objects+=("$(abspath "$2")"); shift ;;
    --object=*) objects+=("$(abspath "${1#*=}")") ;;
    --arch) [ $# -ge 2 ] || die "--arch needs x86_64 or aarch64"; object_arch="$2"; shift ;;
    --arch=*) object_arch="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu)
case "$object_arch" in ""|x86_64|aarch64) ;; *) die "--arch must be x86_64 or aarch64" ;; esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."

objdump_for() {
  case "$1" in
    x86_64) command -v x86_64-linux-gnu-objdump || command -v objdump ;;
    aarch64) command -v aarch64-linux-gnu-objdump ;;
  esac || die "no objdump for $1 (run scripts/install-prereqs.sh: binutils, binutils-aarch64-linux-gnu)"
}

# Architecture of an ELF object, archive or binary, from its header.
elf_arch() {
  local machine
  machine=$(readelf -h "$1" 2>/dev/null | sed -n 's/^ *Machine: *//p' | sort -u)
  case "$machine" in
    *X86-64*) echo x86_64 ;;
    *AArch64*) echo aarch64 ;;
    *) return 1 ;;
  esac
}

# The awk program: reads `objdump -d --no-show-raw-insn -C`, prints tab-separated records
#   FN name insns | EXEMPT name | BAD name addr insn why | NOTE name addr insn why | END nfn ninsn
read -r -d '' AWK_PROG <<'AWK' || true
# Addresses are keys, as canonical hex text (no float conversion of 64-bit addresses).
function normhex(s) {
  s = tolower(s); sub(/^0+/, "", s)
  return s == "" ? "0" : s
}
function exempt(name,    i) {
  if (strict) return 0
  for (i = 1; i <= nex; i++) if (ex[i] != "" && name ~ ex[i]) return 1
  return 0
}
# Classifies a multiply: "" (not a multiply), "vector" (vector, FP, dot product),
# "narrow" (integer multiply narrower than a pointer: the width of int8/int32 MAC arithmetic)
# or "addr" (64-bit integer multiply: usize address and size arithmetic, see the loop rule).
function mulkind(m, ops,    last, n2, parts) {
  if (arch == "x86_64") {
    if (m ~ /^(i?mul[bwlq]?|mulx[lq]?)$/) {
      n2 = split(ops, parts, ",")
      last = parts[n2]
      if (m ~ /q$/ || last ~ /^%r([abcd]x|[sd]i|[sb]p|[0-9]+)$/) return "addr"
      return "narrow"
    }
    if (m ~ /^v?(pmaddubsw|pmaddwd|pmuldq|pmuludq|pmulld|pmullw|pmullq|pmulhw|pmulhuw|pmulhrsw|pmadd52luq|pmadd52huq|pclmul[a-z]*|gf2p8mulb|mul(ps|pd|ss|sd|ph|sh))$/) return "vector"
    if (m ~ /^vpdp[bw][su][su]ds?$/) return "vector"
    if (m ~ /^v?f(n?madd|n?msub|maddsub|msubadd)(132|213|231)?(ps|pd|ss|sd|ph|sh)$/) return "vector"
    if (m ~ /^fi?mulp?[sl]?$/) return "vector"
    if (m ~ /^tdp[a-z0-9]+$/) return "vector"
    return ""
  }
  if (m !~ /^(mul|mla|mls|mneg|mad|msb|madd|msub|smaddl|umaddl|smsubl|umsubl|smnegl|umnegl|smulh|umulh|[su]mull2?|[su]ml[as]l2?|sqdmull2?|sqdml[as]l2?|sqdmulh|sqrdmulh|sqrdml[as]h|[su]dot|usdot|sudot|[su]mmla|usmmla|pmul|pmull2?|pmull[bt]|fmul|fmulx|fnmul|fmla|fmls|fmadd|fmsub|fnmadd|fnmsub|fcmla|fmlal2?|fmlsl2?|fdot|fmmla|bfdot|bfmmla|bfmlal[bt]|bfmlsl[bt]|bfmul)$/) return ""
  if (ops ~ /(^|[^a-z0-9_])[vz][0-9]+\./) return "vector"
  if (m ~ /^(mul|madd|msub|mneg|smulh|umulh)$/ && ops ~ /^x([0-9]+|zr) *,/) return "addr"
  if (m ~ /^(mul|madd|msub|mneg|smaddl|umaddl|smsubl|umsubl|smnegl|umnegl|smull|umull)$/) return "narrow"
  return "vector"   # scalar floating point (fmul d0, ...), or anything else
}
# 1: conditional branch (target + fall through), 2: unconditional jump (target only),
# 3: no successor (return, trap, indirect jump), 0: anything else (falls through).
function flow(m) {
  if (arch == "x86_64") {
    if (m ~ /^(jmp|jmpq|ljmp)$/) return 2
    if (m ~ /^(j[a-z]+|loop[a-z]*|jrcxz|jecxz)$/) return 1
    if (m ~ /^(ret|retq|retl|iret[a-z]*|ud2|ud1|hlt|int3)$/) return 3
    return 0
  }
  if (m == "b") return 2
  if (m ~ /^(b\.[a-z]+|bc\.[a-z]+|cbn?z|tbn?z)$/) return 1
  if (m ~ /^(br|braa|brab|braaz|brabz|ret|retaa|retab|eret|brk|udf|hlt)$/) return 3
  return 0
}
function isect(a, b) {
  while (a != b) {
    while (pon[a] < pon[b]) a = idom[a]
    while (pon[b] < pon[a]) b = idom[b]
  }
  return a
}
function dominates(h, u) {
  while (1) {
    if (u == h) return 1
    if (u == 1) return 0
    u = idom[u]
  }
}
# Loop structure of the current function from its control-flow graph: basic blocks,
# dominators (Cooper-Harvey-Kennedy), back edges u->h where h dominates u, natural loops
# (merged per header). Sets depth[b] and inner[b] (block b lies in an innermost loop).
function loops(    k, b, nbk, s, i, j, h, u, top, sp, npo, changed, nd, p, q, w, nw, nh) {
  delete lead; delete blk; delete succn; delete succ; delete predn; delete pred
  delete seen; delete pon; delete po; delete idom; delete stk; delete sti
  delete body; delete hdr; delete isinner; delete depth; delete inner; delete wl
  lead[1] = 1
  for (k = 1; k <= ni; k++) {
    if (tgi[k] > 0) lead[tgi[k]] = 1
    if (fl[k] != 0 && k < ni) lead[k + 1] = 1
  }
  nbk = 0
  for (k = 1; k <= ni; k++) { if (k in lead) nbk++; blk[k] = nbk; bend[nbk] = k }
  for (b = 1; b <= nbk; b++) { succn[b] = 0; predn[b] = 0 }
  for (b = 1; b <= nbk; b++) {
    k = bend[b]
    if ((fl[k] == 0 || fl[k] == 1) && k < ni) { s = blk[k + 1]; succ[b, ++succn[b]] = s; pred[s, ++predn[s]] = b }
    if ((fl[k] == 1 || fl[k] == 2) && tgi[k] > 0) { s = blk[tgi[k]]; succ[b, ++succn[b]] = s; pred[s, ++predn[s]] = b }
  }
  # Depth-first postorder from the entry block.
  npo = 0; sp = 1; stk[1] = 1; sti[1] = 0; seen[1] = 1
  while (sp > 0) {
    b = stk[sp]
    if (sti[sp] < succn[b]) {
      sti[sp]++; s = succ[b, sti[sp]]
      if (!(s in seen)) { seen[s] = 1; sp++; stk[sp] = s; sti[sp] = 0 }
    } else { npo++; po[npo] = b; pon[b] = npo; sp-- }
  }
  idom[1] = 1
  changed = 1
  while (changed) {
    changed = 0
    for (i = npo - 1; i >= 1; i--) {   # reverse postorder, entry (po[npo]) excluded
      b = po[i]; nd = 0
      for (j = 1; j <= predn[b]; j++) {
        p = pred[b, j]
        if (!(p in idom)) continue
        nd = (nd == 0) ? p : isect(p, nd)
      }
      if (nd != 0 && (!(b in idom) || idom[b] != nd)) { idom[b] = nd; changed = 1 }
    }
  }
  nh = 0
  for (u = 1; u <= nbk; u++) {
    if (!(u in idom)) continue
    for (j = 1; j <= succn[u]; j++) {
      h = succ[u, j]
      if (!(h in idom) || !dominates(h, u)) continue
      if (!((h, h) in body)) { body[h, h] = 1; hdr[++nh] = h }
      nw = 0
      if (!((h, u) in body)) { body[h, u] = 1; wl[++nw] = u }
      while (nw > 0) {
        w = wl[nw--]
        for (q = 1; q <= predn[w]; q++) {
          p = pred[w, q]
          if ((p in idom) && !((h, p) in body)) { body[h, p] = 1; wl[++nw] = p }
        }
      }
    }
  }
  for (i = 1; i <= nh; i++) {
    isinner[hdr[i]] = 1
    for (j = 1; j <= nh; j++) if (j != i && ((hdr[i], hdr[j]) in body)) { isinner[hdr[i]] = 0; break }
  }
  for (b = 1; b <= nbk; b++) {
    depth[b] = 0; inner[b] = 0
    for (i = 1; i <= nh; i++) if ((hdr[i], b) in body) { depth[b]++; if (isinner[hdr[i]]) inner[b] = 1 }
  }
  nloops = nh
}
function flush(    k, kind, b, why) {
  if (fname == "") return
  if (fname !~ /ternary/ || (only != "" && fname !~ only)) { fname = ""; return }
  if (exempt(fname)) { print "EXEMPT\t" fname; nexempt++; fname = ""; return }
  for (k = 1; k <= ni; k++) tgi[k] = (tga[k] != "" && (tga[k] in a2i)) ? a2i[tga[k]] : 0
  loops()
  for (k = 1; k <= ni; k++) {
    kind = mulkind(im[k], io[k])
    if (kind == "") continue
    b = blk[k]
    if (strict) why = "any multiply (--strict)"
    else if (kind == "vector") why = "vector/FP/dot-product multiply"
    else if (kind == "narrow") why = "integer multiply narrower than 64 bits: MAC-width arithmetic"
    else if (inner[b]) why = "64-bit integer multiply in an innermost loop: per MAC step"
    else why = ""
    if (why != "") print "BAD\t" fname "\t" ih[k] "\t" it[k] "\t" why
    else print "NOTE\t" fname "\t" ih[k] "\t" it[k] "\t64-bit multiply outside innermost loops (loop depth " depth[b] "): address/size arithmetic, allowed"
  }
  print "FN\t" fname "\t" ni "\t" nloops
  nfn++; ninsn += ni
  fname = ""
}
BEGIN { nex = split(ENVIRON["ADD_ONLY_EXEMPT"], ex, "\n"); nfn = 0; ninsn = 0; nexempt = 0 }
/^[0-9a-fA-F]+ <.*>:$/ {
  flush()
  addr = $1
  fname = substr($0, length(addr) + 3)
  fname = substr(fname, 1, length(fname) - 2)
  ni = 0
  delete a2i; delete tga
  next
}
/^Disassembly of section|^In archive|file format/ { flush(); next }
/^ *[0-9a-fA-F]+:\t/ {
  if (fname == "" || fname !~ /ternary/ || (only != "" && fname !~ only)) next
  t = index($0, ":\t")
  haddr = substr($0, 1, t - 1); gsub(/ /, "", haddr)
  insn = substr($0, t + 2)
  gsub(/\t/, " ", insn)
  n = split(insn, tok, " ")
  j = 1
  if (arch == "x86_64")
    while (j < n && tok[j] ~ /^(lock|rep|repz|repnz|repe|repne|cs|ds|ss|es|fs|gs|data16|data32|addr16|addr32|notrack|bnd|xacquire|xrelease|rex64|rex(\.[wrxbWRXB]+)?|\{[a-z0-9]+\})$/) j++
  m = tolower(tok[j])
  ops = ""
  for (k = j + 1; k <= n; k++) ops = ops (k > j + 1 ? " " : "") tok[k]
  ni++
  a2i[normhex(haddr)] = ni
  ih[ni] = "0x" haddr; im[ni] = m; io[ni] = ops; it[ni] = m (ops == "" ? "" : " " ops)
  fl[ni] = flow(m); tga[ni] = ""
  # Direct branch target inside this same function (objdump prints <name+0x..> or <name>).
  if ((fl[ni] == 1 || fl[ni] == 2) && match(ops, /[0-9a-fA-F]+ </)) {
    if (index(ops, "<" fname "+0x") || index(ops, "<" fname ">"))
      tga[ni] = normhex(substr(ops, RSTART, RLENGTH - 2))
    else if (fl[ni] == 2)
      fl[ni] = 3   # tail call to another function
  } else if (fl[ni] == 1 || fl[ni] == 2) {
    if (fl[ni] == 2) fl[ni] = 3   # indirect jump: successors unknown
  }
  next
}
END { flush(); print "END\t" nfn "\t" ninsn "\t" nexempt }
AWK

failures=0

# check_file ARCH FILE LABEL
check_file() {
  local arch=$1 file=$2 label=$3 od out
  od=$(objdump_for "$arch")
  [ -r "$file" ] || die "cannot read $file"
  echo "check-add-only: [$arch] disassembling $label with $(basename "$od")"
  local exempt_list
  exempt_list=$(printf '%s\n' "${EXEMPT[@]}")
  # objdump prints "file format not recognized" for LLVM bitcode members: make that an error.
  local dis
  dis=$(mktemp)
  if ! "$od" -d --no-show-raw-insn -C "$file" >"$dis" 2>"$dis.err"; then
    cat "$dis.err" >&2; rm -f "$dis" "$dis.err"; die "$od failed on $file"
  fi
  if grep -q 'file format not recognized' "$dis.err"; then
    cat "$dis.err" >&2; rm -f "$dis" "$dis.err"
    die "$file holds objects objdump cannot read (LLVM bitcode from an LTO build?)"
  fi
  out=$(ADD_ONLY_EXEMPT="$exempt_list" awk -v arch="$arch" -v strict="$strict" -v only="$only" "$AWK_PROG" "$dis")
  rm -f "$dis" "$dis.err"

  local nfn ninsn nexempt nbad nnote
  IFS=$'\t' read -r _ nfn ninsn nexempt < <(grep '^END' <<<"$out")
  nbad=$(grep -c '^BAD' <<<"$out" || true)
  nnote=$(grep -c '^NOTE' <<<"$out" || true)
  while IFS=$'\t' read -r _ fn n nl; do
    echo "  checked  $fn ($n instructions, $nl loops)"
  done < <(grep '^FN' <<<"$out" || true)
  while IFS=$'\t' read -r _ fn; do
    echo "  exempt   $fn (not MAC code, see EXEMPT in $0)"
  done < <(grep '^EXEMPT' <<<"$out" | sort | uniq || true)
  while IFS=$'\t' read -r _ fn addr insn why; do
    echo "  note     $fn at $addr: \`$insn\`: $why"
  done < <(grep '^NOTE' <<<"$out" || true)
  while IFS=$'\t' read -r _ fn addr insn why; do
    echo "check-add-only: FAIL [$arch] $fn: multiply instruction \`$insn\` at $addr ($why)" >&2
  done < <(grep '^BAD' <<<"$out" || true)

  if [ "$nfn" -eq 0 ]; then
    echo "check-add-only: FAIL [$arch] $label: found no function whose symbol contains \`ternary\` to check" >&2
    failures=$((failures + 1))
  fi
  if [ "$nbad" -gt 0 ]; then
    failures=$((failures + 1))
  fi
  local verdict=OK
  { [ "$nbad" -gt 0 ] || [ "$nfn" -eq 0 ]; } && verdict=FAIL
  echo "check-add-only: [$arch] $verdict: $nfn ternary functions checked, $ninsn instructions scanned," \
    "$nbad multiply violations, $nnote allowed address multiplies, $nexempt exempt symbols$([ "$strict" = 1 ] && echo ' (strict)')"
}

arch_of_triple() {
  case "$1" in
    x86_64-*) echo x86_64 ;;
    aarch64-*) echo aarch64 ;;
    *) die "unsupported target $1 (x86_64-* or aarch64-* only)" ;;
  esac
}

if [ ${#objects[@]} -gt 0 ]; then
  for f in "${objects[@]}"; do
    [ -f "$f" ] || die "no such file: $f"
    a=$object_arch
    [ -n "$a" ] || a=$(elf_arch "$f") || die "cannot tell the architecture of $f; pass --arch"
    check_file "$a" "$f" "$f"
  done
else
  for t in "${targets[@]}"; do
    a=$(arch_of_triple "$t")
    if [ "$build" = 1 ]; then
      echo "check-add-only: [$a] cargo build --release -p prom-kernels --target $t (LTO off, see header)"
      if ! json=$(CARGO_PROFILE_RELEASE_LTO=false cargo build --release -p prom-kernels --target "$t" \
        --message-format=json-render-diagnostics); then
        echo "check-add-only: FAIL [$a] cargo build failed for $t: nothing checked" >&2
        failures=$((failures + 1))
        continue
      fi
      # The exact artifact of this build (deps/…-<hash>.rlib), not the uplifted copy another
      # concurrent build could overwrite.
      rmeta=$(grep '"reason":"compiler-artifact"' <<<"$json" | grep '"name":"prom_kernels"' \
        | grep -o '"[^"]*/deps/libprom_kernels-[0-9a-f]*\.rmeta"' | tr -d '"' | tail -n1 || true)
      rlib=${rmeta%.rmeta}.rlib
      if [ -z "$rmeta" ] || [ ! -e "$rlib" ]; then
        rlib=$(grep '"reason":"compiler-artifact"' <<<"$json" | grep '"name":"prom_kernels"' \
          | grep -o '"[^"]*libprom_kernels\.rlib"' | tr -d '"' | tail -n1 || true)
      fi
      [ -n "$rlib" ] && [ -e "$rlib" ] || die "cannot find the prom-kernels rlib for $t"
    else
      tdir=$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
      rlib=$tdir/$t/release/libprom_kernels.rlib
      [ -e "$rlib" ] || die "$rlib missing (drop --no-build)"
    fi
    check_file "$a" "$rlib" "${rlib#"$PWD"/}"
  done
fi

if [ "$failures" -gt 0 ]; then
  echo "check-add-only: FAILED ($failures problem(s) above)" >&2
  exit 1
fi
echo "check-add-only: PASSED"
