#!/usr/bin/env bash
# One entry point for smallgpt_jax: train a config, run a sweep, open
# TensorBoard, or start one process of a multi-host job. See --help.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # Works without pip install.

usage() {
  cat <<'EOF'
usage: ./launch.sh WHAT [ARGS...]

  ./launch.sh configs/NAME.py [--config.KEY=VALUE ...] [--workdir=DIR]
      Train one config (python -m smallgpt_jax.main); logs, samples and
      checkpoints go to runs/NAME/ unless --workdir says otherwise.
      e.g. ./launch.sh configs/char_cpu.py --config.train.num_steps=500

  ./launch.sh experiments/NAME.py [--parallel=N] [--dry-run] [--runs_dir=DIR] [--config.KEY=VALUE ...]
      Run every trial of a sweep (python -m smallgpt_jax.sweep), N at a time,
      each in runs/NAME/<trial>/ (DIR/NAME/<trial>/ with --runs_dir), with a
      live line per running trial (step, loss, ETA) and the sweep's ETA.
      Launching it again skips finished trials and resumes unfinished ones; a
      trial folder that ran other settings is refused (use another --runs_dir).
      --dry-run prints the commands. At the end the results table is printed and written
      to runs/NAME/summary.csv and .md. --config.KEY=VALUE is set in every trial.
      e.g. ./launch.sh experiments/lr_sweep.py --parallel=2   (4 trials of 500 steps)
      a quick try: ./launch.sh experiments/lr_sweep.py --runs_dir=runs/quick --config.train.num_steps=100

  ./launch.sh tensorboard [LOGDIR] [TENSORBOARD FLAGS ...]
      Open TensorBoard on LOGDIR (default runs/, every run named by its folder):
      each run's train and val loss on one card first, samples, and for a sweep
      (LOGDIR=runs/NAME) the HPARAMS table of all its trials. Open
      http://localhost:6006/?smoothing=0 to see the evaluations unsmoothed.

  Multi-host (one process per machine, or per GPU under SLURM; the same
  command everywhere, only the process id differs):
  ./launch.sh --coordinator=HOST:PORT --num_processes=N --process_id=I configs/NAME.py ...
      Join a job of N processes; HOST:PORT is a free port on process 0's host.
  ./launch.sh --multihost configs/NAME.py ...
      Let JAX find the job on its own: Cloud TPU pod slices (run on all
      workers), SLURM, Open MPI. Under SLURM with several tasks (srun) even
      this flag is optional.

Environment: PYTHON (interpreter, default python3), SMALLGPT_DATA_DIR (corpora),
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (what the
multi-host flags set), SMALLGPT_DISTRIBUTED=auto|off (auto: what --multihost sets).
EOF
}

die() { echo "error: $*" >&2; exit 2; }

# Multi-host flags come first; they become the environment main.py reads.
multihost=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --coordinator=*) export JAX_COORDINATOR_ADDRESS="${1#*=}"; multihost=1 ;;
    --num_processes=*) export JAX_NUM_PROCESSES="${1#*=}"; multihost=1 ;;
    --process_id=*) export JAX_PROCESS_ID="${1#*=}"; multihost=1 ;;
    --multihost) export SMALLGPT_DISTRIBUTED=auto; multihost=1 ;;
    *) break ;;
  esac
  shift
done

[[ $# -gt 0 ]] || { usage >&2; exit 2; }
what="$1"; shift

case "$what" in
  -h|--help|help)
    usage ;;
  tensorboard)
    logdir="runs"
    if [[ $# -gt 0 && "$1" != -* ]]; then logdir="$1"; shift; fi
    echo "open the address below with ?smoothing=0 (e.g. http://localhost:6006/?smoothing=0): ten or so evaluations smoothed draw their curve above them" >&2
    exec "$PYTHON" -m tensorboard.main --logdir "$logdir" "$@" ;;
  *.py)
    # A sweep file defines get_sweep(); a config file defines get_config().
    kind=config
    if [[ -f "$what" ]]; then
      if grep -q "^def get_sweep" "$what"; then kind=sweep
      elif ! grep -q "^def get_config" "$what"; then
        die "$what defines neither get_config() (a config) nor get_sweep() (a sweep)."
      fi
    elif [[ "$what" == *experiments/* ]]; then
      kind=sweep  # Missing: the sweep runner says so.
    fi
    if [[ $kind == sweep ]]; then
      [[ $multihost -eq 0 ]] || die "a sweep runs its trials on this machine; multi-host flags apply to one config."
      exec "$PYTHON" -m smallgpt_jax.sweep "$what" "$@"
    fi
    exec "$PYTHON" -m smallgpt_jax.main --config="$what" "$@" ;;
  *)
    die "don't know what to do with '$what': pass configs/NAME.py, experiments/NAME.py or tensorboard. Try --help." ;;
esac
