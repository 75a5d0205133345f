#!/usr/bin/env bash
# One-shot GPU measurement of the real training loop, ~8 minutes: time to a
# validation loss (benchmarks/time_to_loss.py) for shakespeare_char, char_12l
# and attention='fused', with a profiler trace of loop steps, then nanoGPT's
# own shakespeare_char recipe on the same card as the baseline.
#
# From the repository root, with the shared device folder copied in (its
# wheels, Tiny Shakespeare and nanoGPT's files; see ../shared/device/README.md):
#     mkdir -p .device && cp -r ../shared/device/* .device/ && cp -r ../shared/data .device/data
#     bash benchmarks/gpu_check.sh; cat $OUT/summary.txt
# Each section has its own time limit and writes under $OUT (default
# /tmp/gpu_out); a section stopped by its limit keeps what it measured
# (time_to_loss writes its JSON at each evaluation and on SIGTERM), and the
# next section runs. TINY=1 runs every command with tiny settings on a CPU,
# to check the script before spending GPU time (TINY_LIMIT=N: N seconds a
# section, to check the stops too).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
DEV=${DEVICE_DIR:-$ROOT/.device}
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
TINY=${TINY:-0}
export PYTHONUNBUFFERED=1 SMALLGPT_DATA_DIR=${SMALLGPT_DATA_DIR:-$DEV/data}
PY=${PYTHON:-python3}
stamp() { "$PY" -c '
import sys, time
t0 = float(sys.argv[1])
for line in sys.stdin:
    sys.stdout.write(f"[{time.time() - t0:7.1f}s] {line}"); sys.stdout.flush()' "$(date +%s.%N)"; }
T0=$(date +%s)
say() { echo "=== [t=$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }
limit() { if [ "$TINY" = 1 ]; then echo "${TINY_LIMIT:-600}"; else echo "$1"; fi; }  # CPU compiles are slow.

# Tiny settings for the CPU check; nothing on the GPU.
SMALL=()
if [ "$TINY" = 1 ]; then
  SMALL=(--config.model.num_layers=1 --config.model.num_heads=2 --config.model.embed_dim=32
         --config.model.block_size=16 --config.train.batch_size=8 --config.train.eval_steps=2
         --config.train.eval_every=20 --config.train.log_every=5 --config.train.sample_tokens=8
         --config.train.num_steps=40 --config.train.profile_steps=12:13 --repeats=3 --warmup=1)
fi

say env
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"; } >>"$OUT/summary.txt" 2>&1
# The GPU image has jax with CUDA but not ml-collections or tensorboardX.
if ls "$DEV"/wheels/*.whl >/dev/null 2>&1 && [ "$TINY" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$DEV"/wheels/*.whl >>"$OUT/summary.txt" 2>&1
  export PYTHONPATH=/tmp/site:$ROOT
fi
"$PY" -c "import smallgpt_jax.training.loop" >>"$OUT/summary.txt" 2>&1 || say "import failed: see summary.txt"

ttl() { # name, time limit, time_to_loss flags...: the table and JSON line go to the summary.
  local name=$1 lim; lim=$(limit "$2"); shift 2
  say "time_to_loss: $name (limit ${lim}s)"
  # SIGTERM at the limit: the run saves, prints its table and JSON, and ends
  # (a compile in progress finishes first); KILL only 60 s later.
  timeout -k 60 "$lim" "$PY" -m benchmarks.time_to_loss --json_out="$OUT/ttl_$name.json" "$@" \
    "${SMALL[@]}" 2>&1 | stamp >"$OUT/ttl_$name.log"
  local status=${PIPESTATUS[0]}
  echo "exit $status" >>"$OUT/ttl_$name.log"
  grep -vE "^\[ *[0-9.]+s\] (JSON|step +[0-9]+/)" "$OUT/ttl_$name.log" | tail -14 >>"$OUT/summary.txt"
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    say "$name stopped at its limit (exit $status); what it measured is in ttl_$name.json:"
    "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
print("  steps", r["steps"], "first step", r["first_step_s"], "s, evaluations",
      [(e["step"], round(e["val_loss"], 4), round(e["t_s"], 1)) for e in r["evaluations"]])' \
      "$OUT/ttl_$name.json" >>"$OUT/summary.txt" 2>&1 || say "  (no JSON: stopped before its first evaluation)"
  fi
}
# The goal: val loss <= 1.47 from a cold start (empty compilation cache),
# default settings (dtype auto = bfloat16, XLA_FLAGS default = cuBLAS GEMMs).
# Steps 300-302 of this run are traced into $OUT/run_sc/plugins/profile.
ttl shakespeare_char 160 --config=configs/shakespeare_char.py --target_val_loss=1.47 \
  --workdir="$OUT/run_sc" --config.train.profile_steps=300:302
ttl char_12l 75 --config=configs/char_12l.py --target_val_loss=0 --keep_going \
  --config.train.num_steps=200 --config.train.eval_every=200
ttl fused 60 --config=configs/shakespeare_char.py --config.model.attention=fused --config.model.dropout=0 \
  --target_val_loss=0 --keep_going --config.train.num_steps=300 --config.train.eval_every=300
rm -rf "$OUT/run_sc/checkpoints"  # Only the logs and the trace come back.

say "nanoGPT train_shakespeare_char to 5000 iterations (bf16 autocast, torch.compile)"
NANO=(--max_iters=5000 --lr_decay_iters=5000)
[ "$TINY" = 1 ] && NANO=(--max_iters=20 --lr_decay_iters=20 --eval_interval=10 --eval_iters=2
  --n_layer=1 --n_head=2 --n_embd=32 --block_size=16 --batch_size=4 --device=cpu --compile=False)
if "$PY" -c "import torch" 2>/dev/null; then
  mkdir -p /tmp/nanogpt && cp -r "$DEV"/nanogpt/* /tmp/nanogpt/ &&
    cp "$SMALLGPT_DATA_DIR/tinyshakespeare/input.txt" /tmp/nanogpt/data/shakespeare_char/ &&
    ( cd /tmp/nanogpt && "$PY" data/shakespeare_char/prepare.py >"$OUT/nanogpt_prepare.log" 2>&1 &&
      timeout "$(limit 170)" "$PY" train.py config/train_shakespeare_char.py "${NANO[@]}" 2>&1 |
        stamp >"$OUT/nanogpt.log" )
  [ -s "$OUT/nanogpt.log" ] || say "nanoGPT did not start: see $OUT/nanogpt_prepare.log"
  grep -E "step [0-9]+:|iter (0|100|500|1000|2000|3000|4000):" "$OUT/nanogpt.log" >>"$OUT/summary.txt"
else
  say "torch is not installed: nanoGPT skipped"
fi
say done
