"""An older commit's compile check, counted with today's counter: the
before/after of benchmarks/README.md's TPU section on one scale.

    python -m benchmarks.compile_at_commit --commit=c949e65 -- \\
        --config=configs/shakespeare_char.py --target=tpu:v5e-1

The commit's tree is exported to a temporary folder (git archive) and its own
`python -m smallgpt_jax.compile` runs there with the arguments after `--`,
printing what it printed then. Every program it compiles is kept as HLO text,
and the train step's (the first) is counted again with this checkout's
analysis code: XLA's bytes accessed as the compile check sums them and the
bytes that cross HBM, which commits before the HBM count did not print.
Needs libtpu for TPU targets, as the compile check does.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

from absl import app, flags

from smallgpt_jax.analysis import hlo_breakdown, hlo_cost, hlo_text

ROOT = pathlib.Path(__file__).resolve().parent.parent
flags.DEFINE_string("commit", None, "The commit whose compile check runs.", required=True)
FLAGS = flags.FLAGS

# Runs inside the exported tree: the commit's compile check, each compiled
# program's HLO text written next to it as prog1.txt, prog2.txt, ...
_RUNNER = """
import runpy, sys
import jax.stages
out, compile_, n = sys.argv[1], jax.stages.Lowered.compile, [0]
def keep(self, *args, **kwargs):
    compiled = compile_(self, *args, **kwargs)
    n[0] += 1
    open(f"{out}/prog{n[0]}.txt", "w").write(compiled.as_text())
    return compiled
jax.stages.Lowered.compile = keep
sys.argv = ["smallgpt_jax.compile"] + sys.argv[2:]
runpy.run_module("smallgpt_jax.compile", run_name="__main__")
"""


def counted(path: pathlib.Path) -> tuple[float, float]:
    """(XLA's bytes as `--breakdown` sums them, bytes crossing HBM as the
    compile check counts them) of one compiled program's HLO text, loop
    bodies times their runs."""
    text = path.read_text()
    comps = hlo_text.parse(text)
    xla = sum(g["bytes"] for g in hlo_breakdown.contributors(text))
    return xla, hlo_cost.hbm_bytes(comps, hlo_cost.multiplicities(comps)[0])


def main(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tree, hlo = pathlib.Path(tmp, "tree"), pathlib.Path(tmp, "hlo")
        tree.mkdir()
        hlo.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", FLAGS.commit],
                                 capture_output=True, check=False)
        if archive.returncode:
            sys.exit(f"error: git archive {FLAGS.commit}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        (tree / "_keep_hlo.py").write_text(_RUNNER)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(tree)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                           if p and pathlib.Path(p).resolve() != ROOT]))
        proc = subprocess.run([sys.executable, "_keep_hlo.py", str(hlo), *argv[1:]],
                              cwd=tree, env=env, check=False)
        if proc.returncode or not (hlo / "prog1.txt").exists():
            sys.exit(f"error: the compile check of {FLAGS.commit} did not compile (exit "
                     f"{proc.returncode})")
        xla, hbm = counted(hlo / "prog1.txt")
        print(f"\nCounted by this checkout, train step of {FLAGS.commit}: "
              f"{xla / 1e9:.4g} GB (XLA's bytes, summed), {hbm / 1e9:.4g} GB crossing HBM")


if __name__ == "__main__":
    app.run(main)
