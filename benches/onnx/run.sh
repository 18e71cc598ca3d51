#!/usr/bin/env bash
# Peer benchmark: ONNX Runtime (CPU EP) on an int8 QDQ MobileNetV2-1.0-224 (random weights).
#
# Creates benches/.venv if missing, installs pinned onnx / onnxruntime / numpy from PyPI,
# then runs ort_mobilenetv2.py and prints its JSON result on stdout (progress on stderr).
#
# Usage: benches/onnx/run.sh [--threads N] [--iterations I] [--warmup W] [--json-out FILE]
#                            [other ort_mobilenetv2.py options, see --help]
# Environment: PYTHON (interpreter used to create the venv, default python3),
#              PROM_BENCH_VENV (venv directory, default benches/.venv).
set -euo pipefail

# Pinned versions (Python >= 3.11; wheels exist for x86_64 and aarch64 manylinux_2_28,
# which Debian 12's glibc 2.36 satisfies). Transitive dependencies are resolved by pip.
ONNX_VERSION=1.23.2
ORT_VERSION=1.32.0
NUMPY_VERSION=2.4.6
PINS="onnx==${ONNX_VERSION} onnxruntime==${ORT_VERSION} numpy==${NUMPY_VERSION}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
benches="$(dirname "$here")"
venv="${PROM_BENCH_VENV:-$benches/.venv}"
python="${PYTHON:-python3}"
t_start=$(date +%s.%N)

say() { printf '[run.sh] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for a in "$@"; do
    if [[ "$a" == "-h" || "$a" == "--help" ]]; then
        sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        if [[ -x "$venv/bin/python" ]]; then
            echo; "$venv/bin/python" "$here/ort_mobilenetv2.py" --help
        fi
        exit 0
    fi
done

command -v "$python" >/dev/null || die "$python not found (apt-get install -y python3)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python >= 3.11 is required for the pinned numpy/onnxruntime ($("$python" -V 2>&1))"

make_venv() { "$python" -m venv "$venv" >&2; }

if [[ ! -x "$venv/bin/python" ]]; then
    say "creating venv $venv"
    if ! make_venv; then
        rm -rf -- "$venv"  # Debian leaves a venv without pip behind when python3-venv is missing
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            say "python3 -m venv failed; installing python3-venv with apt-get"
            apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
            make_venv || { rm -rf -- "$venv"; die "python3 -m venv still fails"; }
        else
            die "python3 -m venv failed; install python3-venv (as root: apt-get install -y python3-venv)"
        fi
    fi
fi

stamp="$venv/.prom-onnx-bench-pins"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$PINS" ]]; then
    say "installing $PINS"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet $PINS >&2
    printf '%s' "$PINS" >"$stamp"
fi

t_setup=$(date +%s.%N)
rc=0
"$venv/bin/python" "$here/ort_mobilenetv2.py" --cache-dir "$venv/cache/onnx-mobilenetv2" "$@" || rc=$?
t_end=$(date +%s.%N)
say "$(awk -v a="$t_start" -v b="$t_setup" -v c="$t_end" \
    'BEGIN { printf "wall time %.1f s (venv/pip setup %.1f s, script %.1f s)", c - a, b - a, c - b }')"
exit "$rc"
