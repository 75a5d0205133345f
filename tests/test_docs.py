"""The docs cannot silently rot: their code references, shapes and commands are checked.

- Every `smallgpt_jax.module.name` in backticks must import and resolve, and
  every repository path in backticks (`configs/char_cpu.py`) must exist.
- Every named tensor with a shape (`x_BTD` [32, 64, 128]) must agree with the
  letters' values for configs/char_cpu.py, every shape written in letters next
  to its numbers (`[A, B/A, T+1] = [2, 8, 65]`, with `A = 2` said earlier in the
  section) must evaluate to them, and the generated shape table must
  equal what `python -m smallgpt_jax.shapes` prints today.
- Every ```bash block runs, top to bottom, as one `bash -e` script (see
  docs/README.md, "How these pages are tested"): in its own scratch folder
  that looks like the repository and holds a copy of one shared tiny trained
  run in runs/char_cpu, with training commands shrunk to a tiny model and a
  few steps (and no text samples unless asked for); a `python -m pytest ...` command only collects the tests it
  names (the suite runs them anyway). Blocks run two at a time. A block whose first line is
  `# docs-test: skip (REASON)` is not run (e.g. it starts a server).
  A `# expect: REGEX` line in a block must match the block's output.
"""

from __future__ import annotations

import ast
import concurrent.futures
import functools
import glob
import importlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

import pytest

from conftest import NO_CORPUS, ROOT, has_shakespeare
from smallgpt_jax.cli.config_files import load_config
from smallgpt_jax.sweep.load import load_experiment
from smallgpt_jax.system.errors import UserError

DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(glob.glob(os.path.join(DOCS, "*.md")))
README = os.path.join(ROOT, "README.md")  # Its commands and references are checked too.

# Training commands get these first (so a command's own values win) ...
# No text samples at evaluations unless a command asks for them: compiling the
# sampler is a third of a tiny run's cost, and tests/test_cli.py checks them.
TINY = {"model.num_layers": 1, "model.num_heads": 2, "model.embed_dim": 32,
        "model.block_size": 32, "train.batch_size": 8, "train.num_steps": 10,
        "train.warmup_steps": 2, "train.eval_every": 10, "train.log_every": 5,
        "train.checkpoint_every": 10, "train.eval_steps": 2, "train.sample_tokens": 0}
# ... and then every step count a command gives is divided by this (rounded
# up), so "train 200 steps, then continue to 400" keeps its meaning ...
STEP_FIELDS = ("train.num_steps", "train.eval_every", "train.log_every",
               "train.checkpoint_every", "train.warmup_steps")
STEP_DIVISOR = 50
# ... and these are capped.
CAPS = {"train.eval_steps": 2, "train.sample_tokens": 20, "train.batch_size": 8}
# Sweep trials get these, except fields the sweep file's get_sweep() names
# (setting a swept field on the command line is an error; FIXED ones may be).
SWEEP_EXTRA = {**TINY, "train.num_steps": 4, "train.eval_every": 4,
               "train.checkpoint_every": 4, "train.warmup_steps": 1}
SKIP = re.compile(r"^# docs-test: skip \((.+)\)$")
EXPECT = re.compile(r"^# expect: (.+)$")
REPO_ITEMS = ("configs", "smallgpt_jax", "tests", "experiments", "docs", "benchmarks",
              "launch.sh", "pyproject.toml", "README.md")


def read(page: str) -> str:
    with open(page, encoding="utf-8") as f:
        return f.read()


def bash_blocks(page: str) -> list[tuple[int, str]]:
    """(line number, text) of every ```bash block of a page. An HTML comment
    `<!-- docs-test: skip (REASON) -->` right above a block (invisible on the
    rendered page) counts as the block's skip line."""
    text = read(page)
    return [(text[:m.start(2)].count("\n"), (f"# {m.group(1)}\n" if m.group(1) else "") + m.group(2))
            for m in re.finditer(r"(?:^<!-- (docs-test: skip \([^\n]+\)) -->\n)?^```bash\n(.*?)^```",
                                 text, re.S | re.M)]


def all_blocks():
    out = []
    for page in PAGES + [README]:
        for line, block in bash_blocks(page):
            out.append((f"{os.path.relpath(page, ROOT)}:{line}", block))
    return out


# ------------------------------------------------------------------ references

def resolve(dotted: str):
    """Imports the longest module prefix of `dotted` and getattr's the rest."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and not ".".join(parts[:i]).startswith(e.name):
                raise  # A module that exists failed to import one of its own imports.
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_there_are_pages_in_reading_order_linked_from_the_index_and_readme():
    names = [os.path.basename(p) for p in PAGES]
    numbered = [n for n in names if re.match(r"\d\d-", n)]
    assert len(numbered) >= 13, names
    numbers = [int(n[:2]) for n in numbered]
    # In reading order from 1, each number once; a number may be kept for a page to come.
    assert numbers[0] == 1 and numbers == sorted(set(numbers)), names
    index = read(os.path.join(DOCS, "README.md"))
    for n in numbered + ["jax-and-flax.md", "build_a_gpt.ipynb"]:
        assert f"({n})" in index, f"docs/README.md does not link {n}"
    assert "(docs/README.md)" in read(os.path.join(ROOT, "README.md"))


@pytest.mark.parametrize("page", PAGES + [README], ids=os.path.basename)
def test_code_references_resolve(page):
    text = read(page)
    refs = sorted(set(re.findall(r"`(smallgpt_jax(?:\.\w+)+)`", text)))
    bad = []
    for ref in refs:
        try:
            resolve(ref)
        except (ImportError, AttributeError) as e:
            bad.append(f"{ref} ({type(e).__name__}: {e})")
    assert not bad, "unresolved references:\n" + "\n".join(bad)
    folders = "|".join(item for item in REPO_ITEMS if "." not in item)
    paths = set(re.findall(r"`((?:%s)/[\w./-]+|launch\.sh|pyproject\.toml)`" % folders, text))
    missing = [p for p in sorted(paths) if not os.path.exists(os.path.join(ROOT, p.split("::")[0]))]
    assert not missing, f"paths that do not exist: {missing}"
    # Relative links between pages and to images.
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert os.path.exists(os.path.join(os.path.dirname(page), target)), f"broken link {target}"


def test_attention_page_draws_the_pictures_prompt():
    """Page 4 shows images/attention.png 'for the prompt' its command draws:
    the command's --prompt must be the PROMPT docs/make_pictures.py drew with."""
    source = read(os.path.join(DOCS, "make_pictures.py"))
    prompt = ast.literal_eval(re.search(r"^PROMPT = (\"[^\n]*?\")", source, re.M).group(1))
    page = read(os.path.join(DOCS, "04-attention.md"))
    drawn = re.findall(r'--what=attention[ \\\n]*--prompt="([^"]*)"', page)
    assert prompt in drawn, f"page 4 draws {drawn}, the picture shows {prompt!r}"


PYTHON_RUNS = "<!-- docs-test: python blocks run -->"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", read(page), re.S | re.M)


@pytest.mark.parametrize("page", [p for p in PAGES if PYTHON_RUNS in read(p)],
                         ids=os.path.basename)
def test_python_examples_run(page):
    """A page marked PYTHON_RUNS: its ```python blocks run in order, in one
    process (their asserts are the checks), and each stays a short example."""
    blocks = python_blocks(page)
    assert blocks
    for block in blocks:
        assert len(block.strip().splitlines()) <= 10, f"an example longer than 10 lines:\n{block}"
    script = "\n".join(f"print('--- example {i + 1}')\n{b}" for i, b in enumerate(blocks))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


# ---------------------------------------------------------------------- shapes

@functools.cache
def letter_values() -> dict[str, int]:
    """The shape letters' values for configs/char_cpu.py (V: Tiny Shakespeare's 65 characters)."""
    from smallgpt_jax.cli.shapes import letter_values as values_for
    from smallgpt_jax.model import model_config
    c = load_config(os.path.join(ROOT, "configs", "char_cpu.py"))
    return {**values_for(model_config(c.model, 65), c.train.batch_size),
            "A": c.train.grad_accum_steps}


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_named_tensor_shapes_match_char_cpu(page):
    values = letter_values()
    wrong = []
    for lineno, line in enumerate(read(page).splitlines(), 1):
        for name, letters, dims in re.findall(
                r"`(\w+?)_([A-Z]+)`[^`\[\n]{0,24}\[(\d+(?:, \d+)*)\]", line):
            expected = [values[ch] for ch in letters]
            if [int(d) for d in dims.split(", ")] != expected:
                wrong.append(f"line {lineno}: {name}_{letters} [{dims}] should be {expected}")
    assert not wrong, "\n".join(wrong)


def paragraphs(page: str):
    """(first line number, text) of each blank-line-separated paragraph."""
    lineno = 1
    for para in read(page).split("\n\n"):
        yield lineno, para
        lineno += para.count("\n") + 2


def eval_shape_expr(expr: str, values: dict) -> Fraction:
    """A shape written in letters ('B/A', 'T+1', 'B/(n·A)') evaluated exactly."""
    code = expr.replace("·", "*").replace("×", "*").replace("−", "-")
    names = set(re.findall(r"[A-Za-z_]\w*", code))
    missing = names - set(values)
    if missing:
        raise KeyError(f"{', '.join(sorted(missing))} (neither a shape letter nor "
                       "bound in the paragraph, as in 'n = 8')")
    if not re.fullmatch(r"[\w\s+\-*/()]+", code):
        raise ValueError(f"not a shape expression: {expr!r}")
    return eval(re.sub(r"\b(\d+)\b", r"Fraction(\1)", code),
                {"Fraction": Fraction, "__builtins__": {}},
                {k: Fraction(v) for k, v in values.items()})


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_shapes_written_in_letters_equal_their_numbers(page):
    """`[A, B/A, T+1] = [2, 8, 65]` (or a table row `| [D, F] | [128, 512] |`):
    the letters, with char_cpu's values and any `X = 2` stated earlier in the
    section, must give the numbers."""
    wrong, bound = [], {}
    for lineno, para in paragraphs(page):
        text = para.replace("\n", " ")
        if text.startswith("#"):  # A new section: forget its bindings.
            bound = {}
        bound.update((k, int(v)) for k, v in
                     re.findall(r"\b([A-Za-z])\s?=\s?(\d+)\b(?!\])", text))
        for letters, numbers in re.findall(
                r"\[([^\[\]]*[A-Za-z][^\[\]]*)\]\s*[=|]\s*\[(\d+(?:, \d+)*)\]", text):
            exprs = [e.strip() for e in letters.split(",")]
            try:
                got = [eval_shape_expr(e, {**letter_values(), **bound}) for e in exprs]
            except (KeyError, ValueError) as e:
                wrong.append(f"paragraph at line {lineno}: [{letters}]: {e}")
                continue
            if got != [int(n) for n in numbers.split(", ")]:
                wrong.append(f"paragraph at line {lineno}: [{letters}] = [{numbers}], "
                             f"but the letters give {[str(g) for g in got]} (with {bound})")
    assert not wrong, "\n".join(wrong)


def test_shape_expressions_are_checked():
    values = {"B": 16, "T": 64, "A": 2, "n": 8}
    assert eval_shape_expr("B/A", values) == 8 and eval_shape_expr("T+1", values) == 65
    assert eval_shape_expr("B/(n·A)", values) == 1
    with pytest.raises(KeyError):
        eval_shape_expr("B/q", values)
    with pytest.raises(ValueError):
        eval_shape_expr("B; A", values)


def test_generated_shape_tables_are_current():
    from smallgpt_jax.config import base_config  # noqa: F401
    checked = 0
    for page in PAGES:
        text = read(page)
        for m in re.finditer(r"<!-- shapes: python -m smallgpt_jax\.shapes (.*?) -->\n(.*?)"
                             r"<!-- /shapes -->", text, re.S):
            proc = subprocess.run([sys.executable, "-m", "smallgpt_jax.shapes",
                                   *m.group(1).split()], cwd=ROOT, capture_output=True,
                                  text=True, timeout=180)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert m.group(2).strip() == proc.stdout.strip(), (
                f"{os.path.basename(page)}: the shape table is out of date; paste the output "
                f"of `python -m smallgpt_jax.shapes {m.group(1)}` between the markers.")
            checked += 1
    assert checked >= 1


# -------------------------------------------------------------------- commands

def logical_lines(block: str) -> list[str]:
    """The block's lines with backslash continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def _flag_value(arg: str):
    key, _, value = arg[len("--config."):].partition("=")
    return key, value


def setup_step(part: str) -> str | None:
    """What the test runs for an install or server step of a command line
    (None: not such a step). Nothing is installed and no server starts:
    `pip install -e ".[X]"` checks that extra X exists, `tensorboard` that its
    log folder holds event files; the test already runs in an environment."""
    if re.fullmatch(r"python -m venv \S+|\. \S+/bin/activate|source \S+/bin/activate", part):
        return ":"
    if m := re.fullmatch(r'pip install -e "\.(?:\[(\w+)\])?"', part):
        return ("python -c 'import sys, tomllib; extras = tomllib.load(open(\"pyproject.toml\", "
                f"\"rb\"))[\"project\"][\"optional-dependencies\"]; sys.exit(\"{m.group(1) or 'dev'}\" "
                "not in extras)'")
    if m := re.fullmatch(r"(?:tensorboard --logdir|\./launch\.sh tensorboard) (\S+)", part):
        # (A sweep that ran as a --dry-run wrote no logs: its sweep file must exist.)
        return (f"find {m.group(1)} -name 'events.out.tfevents.*' 2>/dev/null | grep -q . "
                f"|| test -f experiments/$(basename {m.group(1)}).py")
    return None


def shrink(line: str, page: str = "") -> str:
    """A docs command as the test runs it: tiny model, few steps (and, on
    README.md, a sweep as a --dry-run: the docs pages run sweeps already)."""
    if " && " in line:
        return " && ".join(shrink(part, page) for part in line.split(" && "))
    if (step := setup_step(line)) is not None:
        return step
    if page == "README.md" and line.startswith("python -m smallgpt_jax.sample "):
        return re.sub(r"--max_new_tokens=(\d+)",
                      lambda m: f"--max_new_tokens={min(int(m.group(1)), CAPS['train.sample_tokens'])}",
                      line)
    if page == "README.md" and re.match(r"(python -m smallgpt_jax\.sweep|\./launch\.sh experiments/)",
                                        line) and "--dry-run" not in line:
        line += " --dry-run"
    if line.startswith("python -m pytest "):
        # This suite runs those tests itself; here the command must select
        # some (pytest exits 5 if it selects none), which collecting shows.
        return line.replace("python -m pytest ", "python -m pytest --collect-only -n 0 ", 1)
    trains = re.search(r"(python -m smallgpt_jax\.main|\./launch\.sh configs/)", line)
    sweeps = re.search(r"(python -m smallgpt_jax\.sweep|\./launch\.sh experiments/)", line)
    if not (trains or sweeps):
        return line
    words = line.split(" ")
    out = []
    for w in words:
        if w.startswith("--config.") and "=" in w:
            key, value = _flag_value(w)
            if key in STEP_FIELDS and value.isdigit():
                w = f"--config.{key}={max(1, math.ceil(int(value) / STEP_DIVISOR))}"
            elif key in CAPS and value.isdigit():
                w = f"--config.{key}={min(int(value), CAPS[key])}"
        out.append(w)
    given = {_flag_value(w)[0] for w in out if w.startswith("--config.")}
    if sweeps:
        sweep_file = os.path.join(ROOT, next(w for w in out if w.startswith("experiments/")))
        try:
            swept = set(load_experiment(sweep_file).keys)
        except UserError:  # A bad file fails when the command runs, with its own message.
            swept = set()
        extra = [f"--config.{k}={v}" for k, v in SWEEP_EXTRA.items()
                 if k not in given and k not in swept]
        return " ".join(out + extra)
    # Insert the tiny defaults right after the config file (the command's own flags win).
    i = 1 + next(j for j, w in enumerate(out)
                 if w.startswith("--config=") or w.startswith("configs/"))
    tiny = [f"--config.{k}={v}" for k, v in TINY.items()]
    return " ".join(out[:i] + tiny + out[i:])


def runnable(block: str, page: str = "") -> tuple[str, list[str]] | None:
    """(script, expected regexes), or None for a block marked as not run."""
    lines = block.splitlines()
    if lines and SKIP.match(lines[0]):
        return None
    expects = [m.group(1) for line in lines if (m := EXPECT.match(line.strip()))]
    script = "\n".join(shrink(line, page) for line in logical_lines(block))
    return script, expects


def make_sandbox(path: str, shared_run: str | None) -> str:
    """A folder that looks like the repository (links), with its own runs/."""
    os.makedirs(os.path.join(path, "runs"))
    for item in REPO_ITEMS:
        if os.path.exists(os.path.join(ROOT, item)):
            os.symlink(os.path.join(ROOT, item), os.path.join(path, item))
    if shared_run:
        shutil.copytree(shared_run, os.path.join(path, "runs", "char_cpu"), symlinks=True)
    return path


def run_script(script: str, cwd: str, timeout: int = 600) -> tuple[int, str, float]:
    """(exit status, output, CPU seconds) of `bash -e` running `script` in `cwd`.

    CPU seconds (of bash and everything it ran) rather than wall time: on a
    shared machine they say how long the block takes on a quiet one."""
    bin_dir = os.path.join(os.path.dirname(cwd), "bin")
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"],
               PYTHONUNBUFFERED="1", PYTHONPATH=cwd)
    # From os.environ (conftest.py): fast-compile XLA_FLAGS and one JAX
    # compilation cache for every block, so a program compiled once (the same
    # tiny model's train step, say) is reused by later commands.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd,
                                env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                log.write(f"\ntimed out after {timeout}s")
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        return proc.returncode, log.read(), usage.ru_utime + usage.ru_stime


BLOCKS = all_blocks()
CANONICAL_RUN = "python -m smallgpt_jax.main --config=configs/char_cpu.py --workdir=runs/char_cpu"


@pytest.fixture(scope="session")
def block_results(request, tmp_path_factory):
    """Runs every selected block once, two at a time: {block id: (rc, output, CPU seconds)}.

    Selected: the blocks whose test pytest is about to run (so `-k 04-attention`
    runs only that page's blocks)."""
    selected = {item.callspec.params["block_id"] for item in request.session.items
                if "block_id" in getattr(getattr(item, "callspec", None), "params", {})}
    if not has_shakespeare():
        pytest.skip(NO_CORPUS)
    base = str(tmp_path_factory.mktemp("docs"))
    os.makedirs(os.path.join(base, "bin"))
    # `python` in the commands is this interpreter (a wrapper, not a link, so a
    # virtual environment's python still finds its packages).
    for name in ("python", "python3"):  # python3: what launch.sh looks for.
        wrapper = os.path.join(base, "bin", name)
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        os.chmod(wrapper, 0o755)
    shared = make_sandbox(os.path.join(base, "shared"), None)
    rc, out, _ = run_script(shrink(CANONICAL_RUN), shared)
    assert rc == 0, f"training the shared tiny run failed:\n{out[-3000:]}"
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for i, (block_id, block) in enumerate(BLOCKS):
            spec = runnable(block, block_id.split(":")[0])
            if spec is None or block_id not in selected:
                continue
            box = make_sandbox(os.path.join(base, f"block{i:02d}"),
                               os.path.join(shared, "runs", "char_cpu"))
            jobs[block_id] = pool.submit(run_script, spec[0], box)
        results = {block_id: job.result() for block_id, job in jobs.items()}
    print("\ndocs blocks, CPU seconds: " + ", ".join(
        f"{block_id} {cpu:.0f}" for block_id, (_, _, cpu) in results.items())
        + f"; total {sum(r[2] for r in results.values()):.0f}")
    return results


def test_skipped_blocks_say_why():
    for block_id, block in BLOCKS:
        first = block.splitlines()[0] if block.strip() else ""
        if first.startswith("# docs-test"):
            assert SKIP.match(first), f"{block_id}: write '# docs-test: skip (REASON)'"


@pytest.mark.parametrize("block_id,block", [b for b in BLOCKS if runnable(b[1])],
                         ids=[b[0] for b in BLOCKS if runnable(b[1])])
def test_docs_commands_run(block_results, block_id, block):
    rc, out, cpu = block_results[block_id]
    script, expects = runnable(block, block_id.split(":")[0])
    assert rc == 0, f"{block_id} failed (exit {rc}, {cpu:.0f} CPU s):\n{script}\n--- output ---\n{out[-4000:]}"
    for pattern in expects:
        assert re.search(pattern, out), f"{block_id}: output does not match {pattern!r}:\n{out[-3000:]}"


def test_shrink_keeps_commands_meaning():
    line = ("python -m smallgpt_jax.main --config=configs/char_cpu.py --workdir=runs/x "
            "--config.train.num_steps=400 --config.model.pos_encoding=rope "
            "--config.train.eval_steps=50 --config.model.num_layers=3")
    out = shrink(line).split()
    assert out[:3] == ["python", "-m", "smallgpt_jax.main"]
    # The command's own values come after the tiny defaults, so they win.
    assert out.index("--config.model.num_layers=3") > out.index("--config.model.num_layers=1")
    assert "--config.train.num_steps=8" in out and "--config.train.eval_steps=2" in out
    assert "--config.model.pos_encoding=rope" in out
    assert shrink("python -m pytest -q tests/test_model.py -k causal") == (
        "python -m pytest --collect-only -n 0 -q tests/test_model.py -k causal")
    assert shrink("ls runs/x") == "ls runs/x"
    if os.path.exists(os.path.join(ROOT, "experiments", "depth_sweep.py")):
        sweep = shrink("python -m smallgpt_jax.sweep experiments/depth_sweep.py --parallel=2")
        # FIXED sets num_steps=500 in the file; the command line may override it.
        assert "--config.train.num_steps=4" in sweep and "--config.model.embed_dim=32" in sweep
        assert "model.num_layers" not in sweep  # The sweep varies it.
