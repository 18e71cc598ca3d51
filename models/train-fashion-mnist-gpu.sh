#!/usr/bin/env bash
# The Fashion-MNIST PROM recipe on one CUDA GPU: the float twin, then four QAT recipes side
# by side on the same GPU (each process is bound by launching small kernels, so they share
# it well). The recipe to ship is chosen on a validation split held out of the training
# set (--holdout), never on the test set; test accuracy is only reported.
#
# Environment:
#   PYTHON       interpreter with torch, torchvision and prom_train (default python3)
#   DATA_DIR     Fashion-MNIST idx files (default Debian's /usr/share/datasets/fashion-mnist)
#   INIT         torchvision MobileNetV2 state dict (default: prom-train's, the ImageNet weights)
#   RUNS         output directory (default runs/fashion-mnist-gpu)
#   QAT_EPOCHS   QAT epochs per recipe; when unset, as many as fit before DEADLINE
#   DEADLINE     Unix time by which QAT must be done (used only without QAT_EPOCHS)
#   COLLECT      when set, the final checkpoints (model only) and logs are copied there
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
RUNS=${RUNS:-runs/fashion-mnist-gpu}
FLOAT_EPOCHS=${FLOAT_EPOCHS:-12}
BATCH=512
HOLDOUT=5000
mkdir -p "$RUNS"
log() { echo "train-gpu: $(date -u +%H:%M:%S) $*" >&2; }
T=("$PY" -m prom_train.cli)
common=(--data fashion-mnist --data-dir "$DATA_DIR" --batch-size "$BATCH" --holdout "$HOLDOUT"
  --device "${DEVICE:-cuda}" ${LIMITS:-})

# The QAT recipes compared: optimizer and ternary rule (quant.ternary_codes).
declare -A RECIPES=(
  [sgd-twn]="--optimizer sgd --lr 0.01 --ternary-rule twn"
  [sgd-l2]="--optimizer sgd --lr 0.01 --ternary-rule l2"
  [adamw-twn]="--optimizer adamw --lr 3e-4 --wd 0 --ternary-rule twn"
  [adamw-l2]="--optimizer adamw --lr 3e-4 --wd 0 --ternary-rule l2"
)
NAMES=(sgd-twn sgd-l2 adamw-twn adamw-l2)

collect() {
  [ -n "${COLLECT:-}" ] || return 0
  mkdir -p "$COLLECT"
  # Model-only checkpoints (the *-last.pt files also hold the optimizer state).
  "$PY" - "$RUNS" "$COLLECT" "${NAMES[@]}" <<'EOF' || true
import os, sys, torch
runs, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
def keep(src, dst):
    ck = torch.load(src, map_location="cpu", weights_only=False)
    small = {k: ck[k] for k in ("phase", "config", "model", "history") if k in ck}
    torch.save(small, dst)
    print(f"collected {src} -> {dst} (epochs {len(small.get('history', []))})", file=sys.stderr)
for sub, phase, dst in [("float", "float", "float.pt")] + [(n, "qat", f"qat-{n}.pt") for n in names]:
    for f in (f"{phase}.pt", f"{phase}-last.pt"):
        src = os.path.join(runs, sub, f)
        if os.path.exists(src):
            keep(src, os.path.join(out, dst))
            break
EOF
  tar -czf "$COLLECT/logs.tar.gz" -C "$RUNS" $(cd "$RUNS" && ls ./*.log 2>/dev/null) || true
}
trap collect EXIT

# 1. The float twin: fine-tuned from torchvision's ImageNet weights.
log "float twin, $FLOAT_EPOCHS epochs"
"${T[@]}" finetune "${common[@]}" ${INIT:+--init "$INIT"} --out "$RUNS/float" \
  --epochs "$FLOAT_EPOCHS" --lr 0.04 --seed 10 2>&1 | tee "$RUNS/float.log"

qat() { # name, epochs, extra arguments...
  local name=$1 epochs=$2
  shift 2
  # shellcheck disable=SC2086 # the recipe's options are words
  "${T[@]}" qat "${common[@]}" --from "$RUNS/float/float.pt" --distill 0.5 --seed 20 \
    ${RECIPES[$name]} --epochs "$epochs" "$@" >"$RUNS/$name$suffix.log" 2>&1
}

# 2. How many QAT epochs fit: all four recipes for 30 steps side by side.
if [ -z "${QAT_EPOCHS:-}" ]; then
  : "${DEADLINE:?set QAT_EPOCHS or DEADLINE}"
  suffix=-probe
  t0=$(date +%s)
  for n in "${NAMES[@]}"; do
    qat "$n" 1 --max-steps 30 --out "$RUNS/probe-$n" &
  done
  wait
  probe_wall=$(($(date +%s) - t0))
  QAT_EPOCHS=$("$PY" - "$RUNS" "$DEADLINE" "$probe_wall" "$HOLDOUT" "$BATCH" "${NAMES[@]}" <<'EOF'
import math, os, sys, time, torch
runs, deadline, wall, holdout, batch = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
step = evals = 0.0
for n in sys.argv[6:]:
    h = torch.load(os.path.join(runs, f"probe-{n}", "qat.pt"), map_location="cpu", weights_only=False)["history"][0]
    step = max(step, h["seconds"] / 30)
    evals = max(evals, h["eval_seconds"])
steps = math.ceil((60000 - holdout) / batch)
epoch = steps * step + evals
setup = max(wall - 30 * step - evals, 0.0)
left = deadline - time.time() - setup - 15
print(f"probe: {step * 1000:.0f} ms/step, {evals:.1f} s eval, {setup:.0f} s setup: {epoch:.1f} s/epoch, {left:.0f} s left", file=sys.stderr)
print(max(1, int(left // epoch)))
EOF
  )
  log "QAT: $QAT_EPOCHS epochs per recipe (probe took ${probe_wall}s)"
fi

# 3. The four QAT recipes, side by side.
suffix=""
pids=()
for n in "${NAMES[@]}"; do
  qat "$n" "$QAT_EPOCHS" --out "$RUNS/$n" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for n in "${NAMES[@]}"; do
  log "$n: $(grep '^{' "$RUNS/$n.log" | tail -1)"
done
exit $status
