"""Screenshots of TensorBoard's first screens, taken in a headless Chromium.

    python docs/tensorboard_screenshots.py                 # trains a tiny run and sweep first
    python docs/tensorboard_screenshots.py --runs=runs     # or shows runs you have

Checks by eye what a user sees first: the Loss card (train and val of each run
on one chart), the samples before the config in the Text tab, the attention
pictures, one per layer (IMAGES), a sweep's HPARAMS table. It starts `tensorboard` on a free port, opens
each page in Chromium (`apt-get install chromium`, or set CHROMIUM) and writes
PNGs into --out (default docs/images/tensorboard). Nothing is installed.
Without --runs it trains one tiny char_cpu run and a tiny lr_sweep into a
temporary folder (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny and quick, with enough evaluations for curves and a sample at each.
TINY = ["--config.model.num_layers=2", "--config.train.num_steps=100",
        "--config.train.eval_every=20", "--config.train.log_every=10",
        "--config.train.eval_steps=2", "--config.train.checkpoint_every=100",
        "--config.train.warmup_steps=20", "--config.train.sample_tokens=120"]
# (file name, page): forceSVG draws the charts without WebGL, which headless lacks.
PAGES = [("landing.png", "?smoothing=0&forceSVG=true#timeseries"),
         ("landing_default_smoothing.png", "?forceSVG=true#timeseries"),
         ("text.png", "#text"),
         ("images.png", "#images"),  # (Time Series loads image cards too late for a shot.)
         ("hparams.png", "#hparams")]


def train(runs: str) -> None:
    """One run (runs/char_cpu) and a sweep of four (runs/lr_sweep/...), tiny."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-m", "smallgpt_jax.main", "--config=configs/char_cpu.py",
                    f"--workdir={os.path.join(runs, 'char_cpu')}", *TINY],
                   cwd=ROOT, env=env, check=True)
    subprocess.run([sys.executable, "-m", "smallgpt_jax.sweep", "experiments/lr_sweep.py",
                    f"--runs_dir={runs}", "--parallel=2", *TINY], cwd=ROOT, env=env, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def screenshot(chromium: str, url: str, path: str) -> None:
    # The virtual time budget lets the page fetch its data and draw before the shot.
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,1000", "--virtual-time-budget=20000",
                    f"--screenshot={path}", url], check=True, capture_output=True, timeout=180)


def shoot(logdir: str, out: str, prefix: str, chromium: str) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir,
                               "--port", str(port), "--host", "localhost"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):  # Until it answers.
            try:
                urllib.request.urlopen(f"http://localhost:{port}/data/runs", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(3)  # Its first pass over the event files.
        for name, page in PAGES:
            path = os.path.join(out, prefix + name)
            screenshot(chromium, f"http://localhost:{port}/{page}", path)
            print(f"wrote {path}")
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", help="a folder of runs (default: train tiny ones first)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "images", "tensorboard"))
    args = parser.parse_args()
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        sys.exit("error: no Chromium found; apt-get install chromium, or set CHROMIUM.")
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        runs = args.runs or os.path.join(scratch, "runs")
        if not args.runs:
            train(runs)
        # As the README opens them: the folder of single runs, and one sweep's folder.
        shoot(runs, args.out, "run_", chromium)
        if os.path.isdir(os.path.join(runs, "lr_sweep")):
            shoot(os.path.join(runs, "lr_sweep"), args.out, "sweep_", chromium)


if __name__ == "__main__":
    main()
