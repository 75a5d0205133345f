r"""The token store on a large corpus: preparation time and memory, training
start-up on a prepared store, and the cost of drawing a batch.

    # A corpus of ~N MB: Tiny Shakespeare's paragraphs, each copy in another
    # seeded order (never commit it).
    python -m benchmarks.data_prep make --mb 300 --out /tmp/corpus300

    # Preparation (python -m smallgpt_jax.prepare in a fresh process, a cold
    # store): wall and CPU seconds, peak resident memory.
    python -m benchmarks.data_prep prepare --corpus /tmp/corpus300 --tokenizer char \
        --cache /tmp/stores

    # Start-up on the prepared store: process start to the first step's batch
    # (python -m smallgpt_jax.main, stopped there), with the peak memory by
    # then and the phases. Run it twice: the first fills the JAX compilation
    # cache (in --cache).
    python -m benchmarks.data_prep startup --corpus /tmp/corpus300 --cache /tmp/stores

    # Drawing batches (64 x 257 tokens) from the memory-mapped store.
    python -m benchmarks.data_prep draw --corpus /tmp/corpus300 --cache /tmp/stores

    # Opening the prepared store (its checks on a sample of blocks, or on
    # every block with --verify), 11 times in one process.
    python -m benchmarks.data_prep open --corpus /tmp/corpus300 --cache /tmp/stores

Each prints one JSON line. Figures depend on the machine and its load:
report them with the conditions they were taken in.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from smallgpt_jax.cli import app as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a child process: `python -m smallgpt_jax.main` as a user starts it,
# stopped when the first step's batch is drawn (the training stream's first
# sample_batch; the evaluation batches, drawn just before it, are counted).
# Prints when (seconds since the parent started the process), the peak
# memory, and what the main phases took. The probes go in once main() has
# applied the process settings, so the imports happen in main's order.
STARTUP = r"""
import os, resource, sys, time
t_parent = float(sys.argv[1])
marks = {"interpreter": time.time() - t_parent}
from smallgpt_jax.cli import main
from smallgpt_jax.system import runtime
setup_process = runtime.setup_process
def probed_setup_process(*args, **kwargs):
    out = setup_process(*args, **kwargs)
    marks["main_called"] = time.time() - t_parent
    from smallgpt_jax import data, parallel, train
    from smallgpt_jax.checkpoint import writer as checkpoint
    from smallgpt_jax.store import store
    from smallgpt_jax.training import loop
    marks["imports"] = time.time() - t_parent
    def timed(module, name):
        inner = getattr(module, name)
        def wrapper(*args, **kwargs):
            t0 = time.time()
            out = inner(*args, **kwargs)
            marks[name] = time.time() - t0
            return out
        setattr(module, name, wrapper)
    for module, name in ((store, "load_splits"), (train, "init_state"),
                         (checkpoint, "Checkpointer"), (parallel, "data_parallel")):
        timed(module, name)
    sample_batch = data.sample_batch
    def first_train_batch(tokens, seed, step, batch_size, block_size, stream=0):
        batch = sample_batch(tokens, seed, step, batch_size, block_size, stream)
        if stream == 0:  # The training stream (1 and 2 are the evaluation batches).
            marks["first_batch"] = time.time() - t_parent
            marks["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if os.path.exists("/proc/self/status"):  # Linux: anonymous / mapped-file pages.
                for line in open("/proc/self/status"):
                    if line.startswith(("RssAnon:", "RssFile:")):
                        marks[line.split(":")[0]] = int(line.split()[1]) * 1024 / 1e6
            print(repr(marks), flush=True)
            os._exit(0)
        return batch
    data.sample_batch = first_train_batch
    return out
runtime.setup_process = probed_setup_process
sys.argv = ["smallgpt_jax.main", "--config=configs/char_cpu.py", f"--workdir={sys.argv[6]}",
            f"--config.data.path={sys.argv[2]}", f"--config.data.cache_dir={sys.argv[3]}",
            f"--config.data.tokenizer={sys.argv[4]}", f"--config.data.vocab_size={sys.argv[5]}",
            "--config.train.batch_size=64", "--config.model.block_size=256",
            # A warm cache is the usual case: not the first run.
            f"--config.compilation_cache={sys.argv[7]}"]
main.run()
"""


def make_corpus(out: str, mb: float, seed: int = 0) -> dict:
    """Writes copies of Tiny Shakespeare, paragraphs reordered per copy, to
    `out`/corpus.txt until it holds `mb` megabytes."""
    from smallgpt_jax import data
    paragraphs = data.read_text(data.find_dataset("tinyshakespeare")).split("\n\n")
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    path, written = os.path.join(out, "corpus.txt"), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < mb * 1e6:
            chunk = "\n\n".join(paragraphs[i] for i in rng.permutation(len(paragraphs))) + "\n\n"
            f.write(chunk)
            written += len(chunk.encode("utf-8"))
    return {"corpus": path, "bytes": os.path.getsize(path)}


def _child_cpu_and_peak() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_maxrss * 1024


def _config(corpus: str, tokenizer: str, vocab: int, cache: str):
    from smallgpt_jax.config import base_config
    c = base_config()
    c.data.path, c.data.cache_dir, c.data.tokenizer, c.data.vocab_size = (
        corpus, cache, tokenizer, vocab)
    return c


def prepare(corpus: str, tokenizer: str, vocab: int, cache: str) -> dict:
    """Times a cold preparation in a fresh process (its store is removed first)."""
    from smallgpt_jax.store import store
    c = _config(corpus, tokenizer, vocab, cache)
    name, _ = store.corpus_files(c.data)
    folder = store.folder_for(c.data, name, store.settings(c.data, name, None))
    subprocess.run(["rm", "-rf", folder], check=True)
    args = [sys.executable, "-m", "smallgpt_jax.prepare", "--config=configs/char_cpu.py",
            f"--config.data.path={corpus}", f"--config.data.cache_dir={cache}",
            f"--config.data.tokenizer={tokenizer}", f"--config.data.vocab_size={vocab}"]
    t0 = time.time()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr)
    cpu, peak = _child_cpu_and_peak()
    with open(os.path.join(folder, "manifest.json")) as f:
        m = json.load(f)
    return {"what": "prepare", "tokenizer": tokenizer, "vocab": m["tokenizer"]["vocab_size"],
            "corpus_mb": sum(s["size"] for s in m["sources"]) / 1e6,
            "tokens": m["train_tokens"] + m["val_tokens"], "wall_s": wall, "cpu_s": cpu,
            "peak_rss_mb": peak / 1e6, "summary": proc.stdout.strip(), "passes": _passes(proc.stderr)}


def _passes(log: str) -> list[str]:
    """The last progress line of each pass (its totals and mean rate)."""
    last: dict[str, str] = {}
    for line in log.replace("\r", "\n").splitlines():
        if line.startswith("preparing ("):
            last[line.split(")")[0]] = line.strip()
    return list(last.values())


def startup(corpus: str, tokenizer: str, vocab: int, cache: str) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", STARTUP, str(t0), corpus, cache, tokenizer,
                               str(vocab), os.path.join(workdir, "run"),
                               os.path.join(cache, "jax_compilation_cache")],
                              cwd=ROOT, capture_output=True, text=True)
    if proc.returncode or not proc.stdout.strip():
        raise SystemExit(proc.stderr)
    marks = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    return {"what": "startup", "tokenizer": tokenizer, "corpus": corpus,
            "seconds_to_first_batch": marks.pop("first_batch"),
            "cpu_s": _child_cpu_and_peak()[0],
            "peak_rss_mb": marks.pop("peak_rss_kib") * 1024 / 1e6,
            # At the first batch, in MB: the pages of the mapped store count in RssFile.
            "rss_anon_mb": marks.pop("RssAnon", None), "rss_file_mb": marks.pop("RssFile", None),
            "seconds": marks,  # Since process start: interpreter, imports; the rest durations.
            "store_was_prepared_now": "preparing" in proc.stderr}


def draw(corpus: str, tokenizer: str, vocab: int, cache: str, steps: int = 2000) -> dict:
    from smallgpt_jax import data
    from smallgpt_jax.store import store
    splits = store.open_store(_config(corpus, tokenizer, vocab, cache).data,
                              verbose=False).splits()
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        data.sample_batch(splits.train, 0, step, 64, 256)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"what": "draw", "batch": [64, 257], "train_tokens": len(splits.train),
            "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "first_ms": float(ms[0])}


def open_store(corpus: str, tokenizer: str, vocab: int, cache: str, verify: bool,
               repeats: int = 11) -> dict:
    """Times `store.open_store` on the prepared store, `repeats` times."""
    from smallgpt_jax.store import store
    c = _config(corpus, tokenizer, vocab, cache)
    store.open_store(c.data, verbose=False)  # Prepared if it was not (not timed).
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        store.open_store(c.data, verbose=False, verify=verify)
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"what": "open", "verify": verify, "median_ms": float(np.median(ms)),
            "min_ms": min(ms), "max_ms": max(ms)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["make", "prepare", "startup", "draw", "open"])
    p.add_argument("--mb", type=float, default=300, help="make: corpus size in MB")
    p.add_argument("--out", default="/tmp/smallgpt_corpus", help="make: output folder")
    p.add_argument("--corpus", help="the corpus file or folder")
    p.add_argument("--tokenizer", default="char")
    p.add_argument("--vocab", type=int, default=8192, help="bpe/word vocabulary size")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "smallgpt_stores"),
                   help="the store folder (data.cache_dir)")
    p.add_argument("--verify", action="store_true", help="open: check every block")
    a = p.parse_args()
    with cli.user_errors():  # One line for a user's mistake, e.g. no Tiny Shakespeare.
        if a.command == "make":
            out = make_corpus(a.out, a.mb)
        elif a.command == "open":
            out = open_store(a.corpus, a.tokenizer, a.vocab, a.cache, a.verify)
        else:
            out = {"prepare": prepare, "startup": startup, "draw": draw}[a.command](
                a.corpus, a.tokenizer, a.vocab, a.cache)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
