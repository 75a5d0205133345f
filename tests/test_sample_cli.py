"""The sampling command line (`python -m smallgpt_jax.sample`), run as a
subprocess: one-line errors for bad flags, and samples that match the library."""

import os

import pytest

from conftest import ROOT, run_cli
from smallgpt_jax import text_generation
from smallgpt_jax.tokenizers.tokenizer import CharTokenizer
from test_generation import random_model

CHARS = "\n :EMORabcd"  # 11 characters: the random model's vocabulary.
TESTS = os.path.join(ROOT, "tests")


def run_sample(args):
    return run_cli(args, module="smallgpt_jax.sample")


def run_with_stand_in(args):
    """The CLI with tests/sample_stand_in.py in place of smallgpt_jax.checkpoint.reader."""
    return run_cli(args, module="sample_stand_in", env_extra={"PYTHONPATH": TESTS})


def assert_one_clear_line(proc, message):
    err = proc.stderr.strip()
    assert proc.returncode != 0
    assert "Traceback" not in err, err[-2000:]
    assert message in err, err[-2000:]
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize("flags,message", [
    (["--top_k=0"], "top_k=0 must be at least 1"),
    (["--top_k=-5"], "top_k=-5 must be at least 1"),
    (["--top_p=0"], "top_p=0.0 must be in (0, 1]"),
    (["--top_p=1.5"], "top_p=1.5 must be in (0, 1]"),
    (["--temperature=-1"], "temperature=-1.0 must be >= 0"),
    (["--max_new_tokens=-1"], "max_new_tokens=-1 must be 0 or more"),
    (["--num_samples=0"], "num_samples=0 must be at least 1"),
    (["--slide_step=0"], "slide_step=0 must be at least 1"),
    ([f"--seed={2**70}"], f"--seed={2**70} must be between -2**63 and 2**63-1"),
    (["--step=last"], "--step='last' must be 'latest', 'best' or a step number"),
    (["--top_k=many"], "top_k"),
    (["extra"], "unexpected arguments 'extra'"),
])
def test_bad_flags_give_one_clear_line(flags, message, tmp_path):
    # The workdir does not even exist: flags are checked before anything else.
    assert_one_clear_line(run_sample([f"--workdir={tmp_path / 'none'}", *flags]), message)


def test_missing_workdir_and_output_folder(tmp_path):
    assert_one_clear_line(run_sample([]), "--workdir")
    assert_one_clear_line(run_sample([f"--workdir={tmp_path / 'none'}"]),
                          f"workdir {tmp_path / 'none'} does not exist")
    assert_one_clear_line(run_sample([f"--workdir={tmp_path}", "--output=/no/such/dir/x.txt"]),
                          "folder /no/such/dir does not exist")
    # Found before the (slow) load and generation, not after.
    assert_one_clear_line(run_sample([f"--workdir={tmp_path}", f"--output={tmp_path}"]),
                          f"--output={tmp_path} is a folder; name a file")
    (tmp_path / "afile").write_text("")
    assert_one_clear_line(run_sample([f"--workdir={tmp_path / 'afile'}"]),
                          f"workdir {tmp_path / 'afile'} is a file")


def test_a_slide_step_longer_than_the_window_fails_before_any_output(saved_model):
    workdir, _, cfg, _ = saved_model
    proc = run_with_stand_in([f"--workdir={workdir}", f"--slide_step={cfg.block_size + 1}"])
    assert proc.stdout == ""
    err = proc.stderr.replace("stand-in load_params(step='latest')\n", "")
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert f"at most block_size={cfg.block_size}" in err


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import sample_stand_in  # noqa: E402 (tests/ is on sys.path under pytest)
    cfg, params = random_model()
    workdir = str(tmp_path_factory.mktemp("run"))
    sample_stand_in.save(workdir, params, cfg, CharTokenizer(CHARS))
    return workdir, params, cfg, CharTokenizer(CHARS)


def test_prompt_characters_are_checked_before_any_output(saved_model):
    proc = run_with_stand_in([f"--workdir={saved_model[0]}", "--prompt=JULIET: hi"])
    assert proc.stdout == ""
    err = proc.stderr.replace("stand-in load_params(step='latest')\n", "")
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert ("prompt: 7 character(s) not in the vocabulary: 'I', 'J', 'L', 'T', 'U', 'h', 'i'"
            in err and "e.g. ' :EMORabcd'" in err), err


@pytest.mark.parametrize("copy", ['{"kind": "char", "chars": "\\n :EMOabcd"}', '{"kind": "ch'])
def test_the_checkpoint_tokenizer_is_used_not_the_workdir_copy(saved_model, tmp_path, copy):
    """The workdir's tokenizer.json is only a copy: edited (here without
    'R') or damaged, it neither refuses a prompt the model reads nor warns."""
    import shutil
    workdir, params, cfg, tok = saved_model
    shutil.copytree(workdir, tmp_path / "run")
    (tmp_path / "run" / "tokenizer.json").write_text(copy)
    proc = run_with_stand_in([f"--workdir={tmp_path / 'run'}", "--prompt=ROMEO:",
                              "--max_new_tokens=10", "--seed=3", "--temperature=0.8"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == expected_output(
        text_generation.sample_texts(params, cfg, tok, "ROMEO:", 10, 3, temperature=0.8))
    assert "warning" not in proc.stderr, proc.stderr


def test_absurd_sizes_sample_or_fail_in_one_line(saved_model):
    workdir, params, cfg, tok = saved_model
    # A top_k past the vocabulary (and past int32) keeps every token.
    proc = run_with_stand_in([f"--workdir={workdir}", "--max_new_tokens=6", "--seed=2",
                              f"--top_k={10**12}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == expected_output(
        text_generation.sample_texts(params, cfg, tok, "", 6, 2, temperature=0.8))
    # Petabytes of tokens: one line, not a NumPy traceback.
    proc = run_with_stand_in([f"--workdir={workdir}", f"--max_new_tokens={10**15}"])
    err = proc.stderr.replace("stand-in load_params(step='latest')\n", "")
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: out of memory for 1 sample(s) of "
                                                   "1,000,000,000,000,000 tokens"), err


def expected_output(texts):
    return "".join(f"--- sample {i + 1} of {len(texts)} ---\n{t}\n" for i, t in enumerate(texts))


def test_streamed_samples_match_the_library(saved_model):
    workdir, params, cfg, tok = saved_model
    proc = run_with_stand_in([f"--workdir={workdir}", "--prompt=ROMEO:", "--max_new_tokens=40",
                              "--num_samples=2", "--temperature=0.8", "--top_k=5",
                              "--top_p=0.95", "--seed=3", "--step=best"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    texts = text_generation.sample_texts(params, cfg, tok, "ROMEO:", 40, 3, num_samples=2,
                                    temperature=0.8, top_k=5, top_p=0.95)
    assert proc.stdout == expected_output(texts)
    assert texts[0] != texts[1] and len(texts[0]) == len("ROMEO:") + 40  # 40 > block_size.
    assert "stand-in load_params(step='best')" in proc.stderr
    assert "80 tokens in" in proc.stderr and "KV cache" in proc.stderr


def test_uncached_greedy_to_a_file_matches_the_library(saved_model, tmp_path):
    workdir, params, cfg, tok = saved_model
    out = tmp_path / "samples.txt"
    proc = run_with_stand_in([f"--workdir={workdir}", "--prompt=", "--max_new_tokens=30",
                              "--temperature=0", "--use_cache=false", "--slide_step=4",
                              "--step=7", f"--output={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""
    texts = text_generation.sample_texts(params, cfg, tok, "", 30, 0, temperature=0.0,
                                    slide_step=4)
    assert out.read_text(encoding="utf-8") == expected_output(texts)
    assert "stand-in load_params(step=7)" in proc.stderr and "no cache" in proc.stderr


def test_a_real_checkpoint_end_to_end(tmp_path):
    """Train a tiny run with the training CLI, then sample it (through the real
    smallgpt_jax.checkpoint.reader)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ROMEO: What light through yonder window breaks?\n" * 40)
    workdir = tmp_path / "run"
    proc = run_cli(["--config=configs/char_cpu.py", f"--workdir={workdir}",
                    f"--config.data.path={corpus}", "--config.model.num_layers=1",
                    "--config.model.block_size=16", "--config.train.batch_size=8",
                    "--config.train.num_steps=20", "--config.train.eval_every=10",
                    "--config.train.eval_steps=1", "--config.train.checkpoint_every=10",
                    "--config.train.sample_tokens=10"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_sample([f"--workdir={workdir}", "--prompt=ROMEO:", "--max_new_tokens=20",
                       "--num_samples=2", "--temperature=0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "--- sample 1 of 2 ---" and "--- sample 2 of 2 ---" in lines
    assert lines[1].startswith("ROMEO:")
    # The workdir's tokenizer.json is only a copy: edited (without 'R'), it is not
    # read; the checkpoint's own tokenizer gives the same samples.
    (workdir / "tokenizer.json").write_text('{"kind": "char", "chars": "\\n :EMOabcd"}')
    again = run_sample([f"--workdir={workdir}", "--prompt=ROMEO:", "--max_new_tokens=20",
                        "--num_samples=2", "--temperature=0"])
    assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr[-3000:]


def test_a_workdir_without_checkpoint_is_one_line(tmp_path):
    assert_one_clear_line(run_sample([f"--workdir={tmp_path}"]), str(tmp_path))


def test_a_workdir_still_training_says_when_its_first_checkpoint_is_due(tmp_path):
    import json
    from smallgpt_jax.system import lock
    (tmp_path / "config.json").write_text(json.dumps(
        {"train": {"checkpoint_every": 500, "eval_every": 220, "num_steps": 2200}}))
    (tmp_path / "progress.json").write_text(json.dumps({"step": 37, "total": 2200}))
    with lock.hold(str(tmp_path)):  # As the training run holds it.
        proc = run_sample([f"--workdir={tmp_path}"])
    assert_one_clear_line(proc, f"{tmp_path} has no checkpoint yet: a run is training there "
                          f"(PID {os.getpid()}")
    assert ("its first checkpoint is due at step 220 (now at step 37 of 2200). Sample once it "
            "is written.") in proc.stderr


def test_a_failed_output_write_leaves_the_old_file_as_it_was(saved_model, tmp_path):
    workdir = saved_model[0]
    out = tmp_path / "samples.txt"
    out.write_text("precious earlier samples\n" * 400)  # 10 kB
    before = out.read_text()
    import subprocess
    import sys
    # Files may grow to 512 bytes only: the disk is full half way through the samples.
    limited = ("import resource, runpy, sys\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))\n"
               "sys.argv = ['sample_stand_in', *sys.argv[1:]]\n"
               "runpy.run_module('sample_stand_in', run_name='__main__', alter_sys=True)\n")
    proc = subprocess.run(
        [sys.executable, "-c", limited, f"--workdir={workdir}", "--max_new_tokens=1000",
         f"--output={out}"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=TESTS),
        capture_output=True, text=True, timeout=300)
    err = proc.stderr.replace("stand-in load_params(step='latest')\n", "")
    assert proc.returncode == 2 and "cannot write" in err and "Traceback" not in err, err
    assert out.read_text() == before
    assert os.listdir(tmp_path) == ["samples.txt"]  # No temporary file left behind.


def test_output_piped_into_a_reader_that_quits_stops_quietly(saved_model):
    import subprocess
    import sys
    workdir = saved_model[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sample_stand_in", f"--workdir={workdir}",
         "--max_new_tokens=200"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=TESTS),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # `... | head -0`: the reader is gone before the first line.
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141, err  # 128 + SIGPIPE, like a Unix tool.
    assert err == (f"stand-in load_params(step='latest')\n"
                   f"checkpoint step latest of {workdir}\n"), err


SLOW_JAX_IMPORT = """
import sys, time
class SlowJax:  # Stands for a slow disk: importing JAX takes a while.
    def find_spec(self, name, path=None, target=None):
        if name == "jax" and not hasattr(self, "seen"):
            self.seen = True
            print("importing jax", file=sys.stderr, flush=True)
            time.sleep(60)
sys.meta_path.insert(0, SlowJax())
"""


@pytest.mark.parametrize("module,args", [
    ("smallgpt_jax.sample", ["--workdir=."]),
    ("smallgpt_jax.main", ["--config=configs/char_cpu.py"]),
])
def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path, module, args):
    import signal
    import subprocess
    import sys
    (tmp_path / "sitecustomize.py").write_text(SLOW_JAX_IMPORT)
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline() == "importing jax\n"
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130 and err == "error: interrupted\n", err


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_while_a_run_loads_its_libraries_is_one_line(tmp_path, signum):
    # (It ended the process silently; once the run starts, StopSignals takes over.)
    import signal
    import subprocess
    import sys
    (tmp_path / "sitecustomize.py").write_text(SLOW_JAX_IMPORT)
    proc = subprocess.Popen([sys.executable, "-m", "smallgpt_jax.main",
                             "--config=configs/char_cpu.py"], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline() == "importing jax\n"
    proc.send_signal(getattr(signal, signum))
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + getattr(signal, signum), err
    assert err == (f"stopped by {signum}; run the same command again to go on (from the "
                   "newest checkpoint, if any).\n")
