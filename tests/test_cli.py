"""The command line, end to end: a short real run, and one-line errors."""

import glob
import io
import os
import sys

import pytest

from conftest import needs_shakespeare, run_cli

TB_SCALARS = {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_sec",
              "eval/train_loss", "eval/val_loss", "eval/val_bpc"}


def read_events(workdir):
    """{tag: [(step, value)]} and the text tags from the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    files = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    assert files, f"no event files in {workdir}"
    acc = EventAccumulator(workdir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
               for tag in acc.Tags()["scalars"]}
    return scalars, acc.Tags()["tensors"]


@needs_shakespeare
def test_short_run_on_tiny_shakespeare_writes_event_files(tmp_path):
    workdir = tmp_path / "run"
    proc = run_cli(["--config=configs/char_cpu.py", f"--workdir={workdir}",
                    "--config.train.num_steps=30", "--config.train.eval_every=15",
                    "--config.train.eval_steps=2", "--config.train.log_every=5",
                    "--config.model.num_layers=1", "--config.train.sample_tokens=20"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val loss" in proc.stderr and "--- sample from the final model ---" in proc.stdout
    scalars, tensors = read_events(str(workdir))
    assert TB_SCALARS <= set(scalars), set(scalars)
    assert [s for s, _ in scalars["train/loss"]] == [5, 10, 15, 20, 25, 30]
    assert [s for s, _ in scalars["eval/val_loss"]] == [15, 30]
    assert scalars["train/loss"][-1][1] < scalars["train/loss"][0][1]
    assert any("sample" in t for t in tensors) and any("config" in t for t in tensors)
    # The first card: train and val of each evaluation, as two runs of one tag.
    for run, tag in (("train", "eval/train_loss"), ("val", "eval/val_loss")):
        assert read_events(str(workdir / run))[0] == {"Loss/run": scalars[tag]}
    assert (workdir / "tokenizer.json").exists() and (workdir / "config.json").exists()
    # The run ends with its result, where it is, and what to run next.
    end = proc.stdout.split("--- done: 30 steps")[1]
    assert f"val {scalars['eval/val_loss'][-1][1]:.4f} nats/token" in end
    for command in (f"python -m smallgpt_jax.sample --workdir={workdir}",
                    f"tensorboard --logdir {tmp_path}   # then open http://localhost:6006/?smoothing=0",
                    f"python -m smallgpt_jax.visualize --workdir={workdir} --what=curves"):
        assert command in end, end


@pytest.mark.parametrize("args,message", [
    (["--config=configs/does_not_exist.py"], "does_not_exist.py"),
    (["--config=configs/char_cpu.py", "--config.model.num_heads=3"],
     "config.model.embed_dim=128 is not divisible by config.model.num_heads=3"),
    (["--config=configs/char_cpu.py", "--config.model.dropout=1.5"],
     "config.model.dropout=1.5 must be in [0, 1)"),
    (["--config=configs/char_cpu.py", "--config.model.no_such_field=1"],
     "--config.model.no_such_field: the config has no field model.no_such_field"),
    (["--config=configs/char_cpu.py", "--config.train.learnig_rate=1"],
     "no field train.learnig_rate (did you mean train.learning_rate?)"),
    (["--config=configs/char_cpu.py", "--config.data.path=/nonexistent/corpus.txt"],
     "no such file, directory or glob match: /nonexistent/corpus.txt"),
    # A wrong path: the closest config, and the list of them.
    (["--config=configs/char_cp.py"], "configs/char_cp.py does not exist (did you mean "
     "configs/char_cpu.py?); pass --config=configs/NAME.py; configs/ holds char_12l.py, char_cpu.py"),
    (["--config=configs/nope.py"], "configs/nope.py does not exist; pass --config="),
    ([], "missing --config: the config file to use, e.g. --config=configs/char_cpu.py; "
     "configs/ holds char_12l.py"),
    (["--config=experiments/lr_sweep.py"], "experiments/lr_sweep.py is a sweep file (it defines "
     "get_sweep()), not a config: run it with ./launch.sh experiments/lr_sweep.py or python -m "
     "smallgpt_jax.sweep experiments/lr_sweep.py."),
])
def test_bad_input_gives_one_clear_line(args, message, tmp_path):
    proc = run_cli(args + [f"--workdir={tmp_path / 'w'}"])
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err, err[-2000:]
    assert message in err, err[-2000:]
    assert len(err.splitlines()) <= 2, err


@pytest.mark.parametrize("module,flag", [("smallgpt_jax.main", "--workdir"),
                                         ("smallgpt_jax.sample", "--top_p"),
                                         ("smallgpt_jax.visualize", "--what")])
def test_help_shows_the_usage_and_the_flags(module, flag):
    # Every error line says "Try --help": it must work.
    proc = run_cli(["--help"], module=module)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"python -m {module} " in proc.stdout and f"  {flag}:" in proc.stdout
    if module == "smallgpt_jax.main":  # --config is absl's flag of another module: listed too.
        assert "  --config: Path to a config file" in proc.stdout
        assert "--config.SECTION.FIELD=VALUE" in proc.stdout and "smallgpt_jax/config.py" in proc.stdout


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_stop_or_an_error_is_said_on_a_line_of_its_own_not_the_progress_bars(monkeypatch):
    from smallgpt_jax.cli import app as cli
    from smallgpt_jax.system.errors import Interrupted, UserError
    from smallgpt_jax.training.reporting import ProgressBar
    for error, said in ((Interrupted("stopped by SIGINT at step 3, after saving checkpoint "
                                     "w/3; run the same command again to resume.", 2),
                         "stopped by SIGINT at step 3"),
                        (UserError("disk full"), "error: disk full")):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        ProgressBar(10, stream=terminal).update(3, 2.0, 1.0)
        with pytest.raises(SystemExit):
            with cli.user_errors():
                raise error
        bar, line = terminal.getvalue().rsplit("\r\x1b[K", 1)
        assert bar.startswith("\rstep      3/10") and line.startswith(said), terminal.getvalue()


def test_too_short_corpus_is_refused(tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("tiny text, far shorter than the context window\n" * 2)
    # As a user's run does, the store is prepared in a child process
    # (store/prepare_child.py; "spawn" imports smallgpt_jax.main there too).
    proc = run_cli(["--config=configs/char_cpu.py", f"--workdir={tmp_path / 'w'}",
                    f"--config.data.path={corpus}"], {"SMALLGPT_PREPARE_IN_PROCESS": "0"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "preparing the token store" in proc.stderr and "(2/2: encoding)" in proc.stderr
    assert "fewer than block_size+1=65" in proc.stderr
