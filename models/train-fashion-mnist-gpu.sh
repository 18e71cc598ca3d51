#!/usr/bin/env bash
# The Fashion-MNIST PROM recipe on one CUDA GPU, which made models/fashion-mnist-prom.prom
# (logs: models/logs/fashion-mnist-gpu-*.log; figures: docs/MODELS.md):
#   1. the float twin, fine-tuned from torchvision's ImageNet weights;
#   2. four QAT recipes from it side by side on the same GPU (each process is bound by
#      launching small kernels, so they share it well): SGD or AdamW, TWN or L2 ternary rule;
#   3. the two AdamW runs continued (a new cosine schedule) at two learning rates;
#   4. the run to ship chosen on a validation split held out of the training set
#      (--holdout 5000), never on the test set; test accuracy is only reported.
# It ran on an NVIDIA H200 (torch 2.11) in two calls: stages 1-2 with QAT_EPOCHS=auto (the
# probe chose 10), then stage 3 from their checkpoints; about 9 minutes in all.
#
# Environment:
#   PYTHON       interpreter with torch, torchvision and prom_train (default python3)
#   DATA_DIR     Fashion-MNIST idx files (default Debian's /usr/share/datasets/fashion-mnist)
#   INIT         torchvision MobileNetV2 state dict (default: prom-train's, the ImageNet weights)
#   RUNS         output directory (default runs/fashion-mnist-gpu)
#   STAGES       the stages to run (default "1 2 3")
#   QAT_EPOCHS   stage 2's epochs (default 10); `auto`: as many as fit before DEADLINE (Unix
#                time), sized by a 30-step probe of the four recipes side by side
#   QAT2_EPOCHS  stage 3's epochs (default 14)
#   COLLECT      when set, model-only checkpoints and the logs are copied there at exit
#   PROMCTL      when set, the chosen run is exported and packed to $RUNS/chosen.prom
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
RUNS=${RUNS:-runs/fashion-mnist-gpu}
STAGES=${STAGES:-1 2 3}
FLOAT_EPOCHS=${FLOAT_EPOCHS:-12}
QAT_EPOCHS=${QAT_EPOCHS:-10}
QAT2_EPOCHS=${QAT2_EPOCHS:-14}
BATCH=512
HOLDOUT=5000
mkdir -p "$RUNS"
log() { echo "train-gpu: $(date -u +%H:%M:%S) $*" >&2; }
stage() { [[ " $STAGES " == *" $1 "* ]]; }
T=("$PY" -m prom_train.cli)
common=(--data fashion-mnist --data-dir "$DATA_DIR" --batch-size "$BATCH" --holdout "$HOLDOUT"
  --device "${DEVICE:-cuda}")
# Extra options for every run (smoke tests: --limit, --max-steps).
read -r -a extra <<<"${LIMITS:-}"
common+=("${extra[@]}")

# Stage 2's recipes: optimizer, learning rate, ternary rule (quant.ternary_codes).
declare -A RECIPES=(
  [sgd-twn]="--optimizer sgd --lr 0.01 --ternary-rule twn"
  [sgd-l2]="--optimizer sgd --lr 0.01 --ternary-rule l2"
  [adamw-twn]="--optimizer adamw --lr 3e-4 --wd 0 --ternary-rule twn"
  [adamw-l2]="--optimizer adamw --lr 3e-4 --wd 0 --ternary-rule l2"
)
NAMES=(sgd-twn sgd-l2 adamw-twn adamw-l2)
# Stage 3's runs: name, stage-2 run continued, ternary rule, learning rate.
CONTINUED=(
  "adamw-l2-lr1e-4 adamw-l2 l2 1e-4"
  "adamw-l2-lr3e-4 adamw-l2 l2 3e-4"
  "adamw-twn-lr1e-4 adamw-twn twn 1e-4"
  "adamw-twn-lr3e-4 adamw-twn twn 3e-4"
)
NAMES2=()
for c in "${CONTINUED[@]}"; do NAMES2+=("${c%% *}"); done

collect() {
  [ -n "${COLLECT:-}" ] || return 0
  mkdir -p "$COLLECT"
  # Model-only checkpoints (the *-last.pt files also hold the optimizer state).
  "$PY" - "$RUNS" "$COLLECT" "${NAMES[@]}" "${NAMES2[@]}" <<'PY' || true
import os, sys, torch
runs, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
subs = [("float", "float", "float.pt")] + [(n, "qat", f"qat-{n}.pt") for n in names]
for sub, phase, dst in subs:
    for f in (f"{phase}.pt", f"{phase}-last.pt"):
        src = os.path.join(runs, sub, f)
        if os.path.exists(src):
            ck = torch.load(src, map_location="cpu", weights_only=False)
            small = {k: ck[k] for k in ("phase", "config", "model", "history") if k in ck}
            torch.save(small, os.path.join(out, dst))
            print(f"collected {src} ({len(small.get('history', []))} epochs)", file=sys.stderr)
            break
PY
  (cd "$RUNS" && tar -czf "$COLLECT/logs.tar.gz" ./*.log) || true
}
trap collect EXIT

# 1. The float twin.
if stage 1; then
  log "float twin, $FLOAT_EPOCHS epochs"
  "${T[@]}" finetune "${common[@]}" ${INIT:+--init "$INIT"} --out "$RUNS/float" \
    --epochs "$FLOAT_EPOCHS" --lr 0.04 --seed 10 2>&1 | tee "$RUNS/float.log"
fi

qat() { # name, epochs, log suffix, extra arguments...
  local name=$1 epochs=$2 suffix=$3
  shift 3
  # shellcheck disable=SC2086 # the recipe's options are words
  "${T[@]}" qat "${common[@]}" --from "$RUNS/float/float.pt" --distill 0.5 --seed 20 \
    ${RECIPES[$name]} --epochs "$epochs" "$@" >"$RUNS/$name$suffix.log" 2>&1
}

wait_all() { # waits for the given process ids; fails if any failed
  local p status=0
  for p in "$@"; do wait "$p" || status=1; done
  return $status
}

# 2. The four QAT recipes from the float twin, side by side.
if stage 2; then
  if [ "$QAT_EPOCHS" = auto ]; then
    : "${DEADLINE:?QAT_EPOCHS=auto needs DEADLINE}"
    t0=$(date +%s)
    pids=()
    for n in "${NAMES[@]}"; do
      qat "$n" 1 -probe --max-steps 30 --out "$RUNS/probe-$n" &
      pids+=($!)
    done
    wait_all "${pids[@]}"
    probe_wall=$(($(date +%s) - t0))
    QAT_EPOCHS=$("$PY" - "$RUNS" "$DEADLINE" "$probe_wall" "$HOLDOUT" "$BATCH" "${NAMES[@]}" <<'PY'
import math, os, sys, time, torch
runs, deadline, wall = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
holdout, batch, names = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
step = evals = 0.0
for n in names:
    path = os.path.join(runs, f"probe-{n}", "qat.pt")
    h = torch.load(path, map_location="cpu", weights_only=False)["history"][0]
    step = max(step, h["seconds"] / 30)
    evals = max(evals, h["eval_seconds"])
epoch = math.ceil((60000 - holdout) / batch) * step + evals
setup = max(wall - 30 * step - evals, 0.0)
left = deadline - time.time() - setup - 15
print(f"probe: {step * 1000:.0f} ms/step, {evals:.1f} s eval, {setup:.0f} s setup: "
      f"{epoch:.1f} s/epoch, {left:.0f} s left", file=sys.stderr)
print(max(1, int(left // epoch)))
PY
    )
    log "QAT: $QAT_EPOCHS epochs per recipe (probe took ${probe_wall}s)"
  fi
  pids=()
  for n in "${NAMES[@]}"; do
    qat "$n" "$QAT_EPOCHS" "" --out "$RUNS/$n" &
    pids+=($!)
  done
  wait_all "${pids[@]}"
  for n in "${NAMES[@]}"; do log "$n: $(grep '^{' "$RUNS/$n.log" | tail -1)"; done
fi

# 3. The AdamW runs continued at two learning rates, the float twin still the teacher.
if stage 3; then
  pids=()
  for c in "${CONTINUED[@]}"; do
    read -r name source rule lr <<<"$c"
    "${T[@]}" qat "${common[@]}" --from "$RUNS/$source/qat.pt" \
      --teacher "$RUNS/float/float.pt" --distill 0.5 --seed 30 --optimizer adamw --wd 0 \
      --lr "$lr" --ternary-rule "$rule" --epochs "$QAT2_EPOCHS" --out "$RUNS/$name" \
      >"$RUNS/$name.log" 2>&1 &
    pids+=($!)
  done
  wait_all "${pids[@]}"
  for n in "${NAMES2[@]}"; do log "$n: $(grep '^{' "$RUNS/$n.log" | tail -1)"; done
fi

# 4. The choice: the highest validation accuracy at the end of a run.
chosen=$("$PY" - "$RUNS" "${NAMES[@]}" "${NAMES2[@]}" <<'PY'
import os, sys, torch
runs, names = sys.argv[1], sys.argv[2:]
best = None
for n in names:
    path = os.path.join(runs, n, "qat.pt")
    if os.path.exists(path):
        h = torch.load(path, map_location="cpu", weights_only=False)["history"][-1]
        print(f"{n}: validation {h['val_accuracy']:.2f}%", file=sys.stderr)
        if best is None or h["val_accuracy"] > best[0]:
            best = (h["val_accuracy"], n)
print(best[1] if best else "")
PY
)
log "chosen on the validation split: ${chosen:-none}"
if [ -n "$chosen" ] && [ -n "${PROMCTL:-}" ]; then
  "${T[@]}" export "$RUNS/$chosen/qat.pt" -o "$RUNS/chosen.safetensors"
  "$PROMCTL" pack "$RUNS/chosen.safetensors" --labels "$RUNS/chosen.labels" -o "$RUNS/chosen.prom"
fi
