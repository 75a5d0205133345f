"""Sweeps: the helpers, the checks before any trial runs, and a tiny sweep
run end to end (results table, TensorBoard hparams, relaunch)."""

import csv
import glob
import json
import os
import shutil
import types

import numpy as np
import pytest

from conftest import ROOT, run_cli
from smallgpt_jax import sweep
from smallgpt_jax.sweep import command as sweep_command
from smallgpt_jax.sweep import load as sweep_load, report as sweep_report, run as sweep_run
from smallgpt_jax.system.errors import UserError


def test_values_product_and_zipit():
    lr = sweep.values("train.learning_rate", [1e-3, 3e-3])
    assert lr == [{"train.learning_rate": 1e-3}, {"train.learning_rate": 3e-3}]
    grid = sweep.product(lr, sweep.values("model.dropout", [0.0, 0.1, 0.2]))
    assert len(grid) == 6
    assert {(g["train.learning_rate"], g["model.dropout"]) for g in grid} == {
        (a, b) for a in (1e-3, 3e-3) for b in (0.0, 0.1, 0.2)}
    paired = sweep.zipit(sweep.values("model.num_layers", [2, 4]),
                         sweep.values("model.embed_dim", [64, 128]))
    assert paired == [{"model.num_layers": 2, "model.embed_dim": 64},
                      {"model.num_layers": 4, "model.embed_dim": 128}]
    with pytest.raises(UserError, match="train.learning_rate is set by two"):
        sweep.product(lr, lr)
    with pytest.raises(UserError, match="one length"):
        sweep.zipit(lr, sweep.values("model.dropout", [0.0]))


def test_trial_names_come_from_the_overrides():
    keys = ["train.learning_rate", "model.dropout"]
    assert sweep_load.trial_name({"train.learning_rate": 3e-4, "model.dropout": 0.1}, keys) == \
        "lr=3e-4,dropout=0.1"
    assert sweep_load.trial_name({}, keys) == "base"
    # Two swept fields with the same last name keep their full names.
    assert sweep_load.trial_name({"model.dropout": 0.1, "train.dropout": 0.2},
                                 ["model.dropout", "train.dropout"]) == \
        "model.dropout=0.1,train.dropout=0.2"
    assert sweep_load.trial_name({"data.path": "/a b/c.txt"}, ["data.path"]) == "path=-a-b-c.txt"


def write_sweep(tmp_path, body, name="exp"):
    path = tmp_path / f"{name}.py"
    path.write_text("from smallgpt_jax import sweep\nCONFIG = 'configs/char_cpu.py'\n" + body)
    return str(path)


@pytest.mark.parametrize("body,message", [
    ("", "has no get_sweep() function"),
    ("def get_sweep():\n    return sweep.values('train.learnig_rate', [1e-3])\n",
     "no field train.learnig_rate (did you mean train.learning_rate?)"),
    ("def get_sweep():\n    return [{'model.num_layers': 2.5}]\n",
     "model.num_layers=2.5 has type float, but the field's type is int"),
    ("def get_sweep():\n    return [{'model.num_heads': 3}]\n",
     "trial 1 (num_heads=3): config.model.embed_dim=128 is not divisible"),
    ("def get_sweep():\n    return [{'model.dropout': 0.1}, {'model.dropout': 0.1}]\n",
     "trials 1 and 2 would share the folder dropout=0.1"),
    ("def get_sweep():\n    return [{'data.path': 'a b'}, {'data.path': 'a-b'}]\n",
     "trials 1 and 2 would share the folder path=a-b (the same overrides, or values that "
     "differ only in characters a folder name cannot hold)"),
    ("NAME = '../elsewhere'\ndef get_sweep():\n    return [{}]\n",
     "NAME = '../elsewhere' must be a plain folder name"),
    ("FIXED = {'train.resume_step': 40}\ndef get_sweep():\n    return [{}]\n",
     "train.resume_step=40 is for one run; a sweep's trials resume from their newest"),
    ("FIXED = {'model.dropout': 0.2}\ndef get_sweep():\n    return [{'model.dropout': 0.1}]\n",
     "model.dropout is both swept and fixed"),
    ("FIXED = {'train.num_step': 5}\ndef get_sweep():\n    return [{}]\n",
     "FIXED: the config has no field train.num_step (did you mean train.num_steps?)"),
    ("def get_sweep():\n    return []\n", "must return a non-empty list of dicts"),
    ("def get_sweep():\n    return 1 / 0\n", "get_sweep() failed: ZeroDivisionError"),
    ("CONFIG = 'configs/missing.py'\ndef get_sweep():\n    return [{}]\n",
     "CONFIG = 'configs/missing.py' does not exist"),
    ("def get_sweep():\n    return [{1: 2}]\n",
     "trial 1: override keys are dotted field names like 'train.learning_rate', not 1"),
])
def test_experiment_is_checked_before_any_trial(tmp_path, body, message):
    with pytest.raises(UserError) as e:
        sweep_load.load_experiment(write_sweep(tmp_path, body), str(tmp_path / "runs"))
    assert message in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_missing_sweep_file_and_bad_command_line_values(tmp_path):
    with pytest.raises(UserError, match="sweep file .*nope.py does not exist"):
        sweep_load.load_experiment(str(tmp_path / "nope.py"))
    path = write_sweep(tmp_path, "def get_sweep():\n    return [{'model.dropout': 0.1}]\n")
    with pytest.raises(UserError, match="no field model.num_layer "):
        sweep_load.load_experiment(path, cli_overrides=["model.num_layer=2"])
    with pytest.raises(UserError, match="'x' is not a valid int"):
        sweep_load.load_experiment(path, cli_overrides=["model.num_layers=x"])
    exp = sweep_load.load_experiment(path, cli_overrides=["model.num_layers=2",
                                                          "model.use_bias=false"])
    assert "--config.model.num_layers=2" in exp.trials[0].command
    assert "--config.model.use_bias=False" in exp.trials[0].command


def test_shipped_experiments_are_valid(monkeypatch):
    monkeypatch.chdir(ROOT)
    lr = sweep_load.load_experiment("experiments/lr_sweep.py", "runs")
    assert [t.overrides["train.learning_rate"] for t in lr.trials] == [3e-4, 1e-3, 3e-3, 1e-2]
    assert lr.trials[0].workdir == os.path.join("runs", "lr_sweep", "lr=3e-4")
    assert all(t.num_steps == 500 for t in lr.trials)
    depth = sweep_load.load_experiment("experiments/depth_sweep.py", "runs")
    assert len(depth.trials) == 6 and depth.keys == ["model.num_layers", "model.pos_encoding"]
    assert "num_layers=4,pos_encoding=rope" in [t.name for t in depth.trials]


def nest(flat):
    """{'a.b': 1} -> {'a': {'b': 1}}: a config.json as a run writes it."""
    out = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def test_a_trial_is_finished_when_its_folder_ran_its_settings_to_the_end(tmp_path):
    path = write_sweep(tmp_path, "def get_sweep():\n    return [{'train.num_steps': 4}]\n")
    trial = sweep_load.load_experiment(path, str(tmp_path / "runs")).trials[0]
    assert not sweep_run.is_finished(trial)
    os.makedirs(trial.workdir)
    summary = os.path.join(trial.workdir, "summary.json")
    config = os.path.join(trial.workdir, "config.json")
    with open(config, "w") as f:  # The run resolves dtype 'auto'; that is no difference,
        # nor is the step a run by hand was restarted from.
        json.dump(nest(dict(trial.config, **{"model.dtype": "float32",
                                             "train.resume_step": 2})), f)
    with open(summary, "w") as f:
        json.dump({"steps": 2}, f)  # e.g. an earlier run of fewer steps, then stopped.
    assert not sweep_run.is_finished(trial)
    with open(summary, "w") as f:
        json.dump({"steps": 4, "eval/best_val_loss": 2.5}, f)
    assert sweep_run.examine(trial).summary["eval/best_val_loss"] == 2.5
    with open(config, "w") as f:  # The same folder, run with another learning rate.
        json.dump(nest(dict(trial.config, **{"train.learning_rate": 0.5})), f)
    found = sweep_run.examine(trial)
    assert not found.finished
    assert found.conflict == ("ran with other settings (train.learning_rate: 0.5 -> "
                              f"{trial.config['train.learning_rate']!r})")
    os.remove(config)  # Results, but no record of what made them.
    assert "has results but no config.json" in sweep_run.examine(trial).conflict
    for damaged in ("{", "{}", '{"model": {}, "train": 1, "data": {}}'):
        with open(config, "w") as f:
            f.write(damaged)
        assert "has a config.json that is damaged" in sweep_run.examine(trial).conflict
    shutil.rmtree(trial.workdir)
    with open(trial.workdir, "w") as f:  # Not even a folder.
        f.write("x")
    assert sweep_run.examine(trial).conflict == "is a file, not a folder"


@pytest.mark.parametrize("content", ['{"steps": ', '[]', '{"steps": "4"}', '{"steps": 4.0}',
                                     '{"steps": 4, "eval/best_val_loss": "low"}',
                                     '{"steps": 4, "wall_time_s": Infinity}', '{}'])
def test_a_summary_the_sweep_cannot_read_is_damaged_not_a_traceback(tmp_path, content):
    path = write_sweep(tmp_path, "def get_sweep():\n    return [{'train.num_steps': 4}]\n")
    trial = sweep_load.load_experiment(path, str(tmp_path / "runs")).trials[0]
    os.makedirs(trial.workdir)
    with open(os.path.join(trial.workdir, "config.json"), "w") as f:
        json.dump(nest(trial.config), f)
    with open(os.path.join(trial.workdir, "summary.json"), "w") as f:
        f.write(content)
    found = sweep_run.examine(trial)
    assert not found.finished and found.damaged.endswith("summary.json is damaged")


def test_a_trial_whose_folder_changed_since_the_check_is_not_started(tmp_path):
    import io
    import sys
    workdir = str(tmp_path / "trial")
    os.makedirs(workdir)
    marker = os.path.join(workdir, "started")
    trial = sweep_load.Trial("trial", {}, workdir, 1,
                             [sys.executable, "-c", f"open({marker!r}, 'w').close()"],
                             {"train.learning_rate": 1e-3})
    with open(os.path.join(workdir, "config.json"), "w") as f:  # Another run's, since.
        json.dump({"model": {}, "train": {"learning_rate": 1e-2}, "data": {}}, f)
    out = io.StringIO()
    assert sweep_run.run_trials([trial], parallel=1, out=out) == {"trial": sweep_run.CONFLICT}
    assert not os.path.exists(marker)
    assert (f"skipped trial: {workdir} ran with other settings (train.learning_rate: 0.01 -> "
            "0.001)") in out.getvalue()
    experiment = sweep_load.Experiment("x", "x.py", "c.py", str(tmp_path), [], [trial])
    row, = sweep_report.results_table(experiment, {"trial": sweep_run.CONFLICT})
    assert row["status"] == "other settings in its folder" and row["best_val_loss"] == ""


def test_a_second_ctrl_c_at_any_moment_stops_every_trial(tmp_path):
    class Proc:  # Records what the runner does to a trial's process.
        def __init__(self):
            self.calls = []
        terminate = lambda self: self.calls.append("terminate")
        kill = lambda self: self.calls.append("kill")
        wait = lambda self: self.calls.append("wait")

    def say(text):
        raise KeyboardInterrupt  # The second Ctrl-C, before the runner waited for any.
    procs, logs = [Proc(), Proc()], [open(tmp_path / n, "w") for n in "ab"]
    sweep_run._stop([(None, p, log, 0.0, 1) for p, log in zip(procs, logs)], say)
    assert [p.calls for p in procs] == [["terminate", "kill", "wait"]] * 2
    assert all(log.closed for log in logs)


class ClosedTerminal:
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")
    flush = write


def test_the_runner_goes_on_when_its_output_is_gone(tmp_path):
    import sys
    marker = str(tmp_path / "done")
    trial = sweep_load.Trial("t", {}, str(tmp_path / "t"), 1,
                             [sys.executable, "-c", f"open({marker!r}, 'w').close()"])
    assert sweep_run.run_trials([trial], parallel=1, out=ClosedTerminal()) == {"t": 0}
    assert os.path.exists(marker)


def test_a_runner_ended_by_an_error_stops_its_trials_first(tmp_path, monkeypatch):
    import sys
    import time
    workdir = str(tmp_path / "t")
    trial = sweep_load.Trial("t", {}, workdir, 1, [sys.executable, "-c", SIGNAL_RECORDER, workdir])
    sleep = time.sleep

    def fail_once_started(seconds):  # Something the runner did not expect, mid-sweep.
        log = os.path.join(workdir, "train.log")
        deadline = time.time() + 60
        while "handlers set" not in open(log).read():
            assert time.time() < deadline
            sleep(0.05)
        raise RuntimeError("unexpected")
    monkeypatch.setattr(sweep_run.time, "sleep", fail_once_started)
    with pytest.raises(RuntimeError):
        sweep_run.run_trials([trial], parallel=1, out=ClosedTerminal())
    assert open(os.path.join(workdir, "signals")).read() == "SIGTERM"  # It saved and stopped.


def test_a_failed_trial_whose_folder_was_removed_says_so(tmp_path):
    trial = sweep_load.Trial("t", {}, str(tmp_path / "gone"), 1, [])
    assert "its train.log is gone (was" in sweep_run._outcome(trial, 1, 3.0)


def test_results_table_puts_non_finite_losses_last(tmp_path):
    trials = []
    for name, best in (("a", float("nan")), ("b", 2.0), ("c", float("inf")), ("d", 1.0)):
        workdir = tmp_path / name
        os.makedirs(workdir)
        (workdir / "config.json").write_text('{"model": {}, "train": {}, "data": {}}')
        (workdir / "summary.json").write_text(json.dumps({"steps": 1, "eval/best_val_loss": best}))
        trials.append(sweep_load.Trial(name, {}, str(workdir), 1, []))
    experiment = sweep_load.Experiment("x", "x.py", "c.py", str(tmp_path), [], trials)
    rows = sweep_report.results_table(experiment, {})
    assert [r["trial"] for r in rows[:2]] == ["d", "b"]
    assert {r["best_val_loss"] for r in rows[2:]} == {"nan", "inf"}


def test_command_line_overrides_go_to_the_trials_and_docs_spellings_work():
    argv, overrides = sweep_command.split_overrides(
        ["sweep.py", "exp.py", "--dry-run", "--runs-dir=d", "--config.model.dropout=0.1",
         "--parallel=2"])
    assert argv == ["sweep.py", "exp.py", "--dry_run", "--runs_dir=d", "--parallel=2"]
    assert overrides == ["model.dropout=0.1"]
    with pytest.raises(UserError, match="extra settings look like --config.train.num_steps=100"):
        sweep_command.split_overrides(["sweep.py", "exp.py", "--config.model.dropout"])


def test_bad_sweep_on_the_command_line_is_one_line(tmp_path):
    path = write_sweep(tmp_path, "def get_sweep():\n    return sweep.values('model.layers', [1])\n")
    proc = run_cli([path, f"--runs_dir={tmp_path / 'runs'}"], module="smallgpt_jax.sweep")
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "no field model.layers" in err
    assert not (tmp_path / "runs").exists()


def hparams_records(directory):
    """The hparams plugin's records in a run's event files: {tag: content}."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    records = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for raw in RawEventFileLoader(path).Load():
            for value in event_pb2.Event.FromString(raw).summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    records[value.tag] = value.metadata.plugin_data.content
    return records


TINY = {"model.num_layers": 1, "model.embed_dim": 32, "model.num_heads": 2,
        "model.block_size": 16, "train.batch_size": 8, "train.num_steps": 4,
        "train.warmup_steps": 2, "train.log_every": 2, "train.eval_every": 2,
        "train.eval_steps": 2, "train.sample_tokens": 8}


def write_corpus(path, seed=0):
    words = ["to", "be", "or", "not", "that", "is", "the", "question"]
    rng = np.random.default_rng(seed)
    path.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(500)) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A tiny sweep run once: two trials finish, the third fails. Tests that
    change its folders work on a copy (copy_runs)."""
    tmp = tmp_path_factory.mktemp("tiny")
    corpus = write_corpus(tmp / "corpus.txt")
    path = write_sweep(tmp, f"FIXED = {dict(TINY, **{'data.path': str(corpus)})!r}\n" + (
        "def get_sweep():\n"
        "    # The last trial fails: its validation text is shorter than the context.\n"
        "    return sweep.values('train.learning_rate', [1e-3, 1e-2]) + "
        "[{'data.train_fraction': 0.9999}]\n"), name="tiny")
    runs = tmp / "runs"
    args = [path, f"--runs_dir={runs}", "--parallel=2"]
    proc = run_cli(args, module="smallgpt_jax.sweep", timeout=600)
    return types.SimpleNamespace(tmp=tmp, corpus=corpus, path=path, runs=runs, args=args,
                                 proc=proc)


def copy_runs(tiny, tmp_path, trials=("lr=1e-3", "lr=1e-2")):
    """The finished trials of `tiny_sweep` (and its tables), copied under tmp_path."""
    runs = tmp_path / "runs"
    for name in (*trials, "summary.csv", "summary.md"):
        source, dest = tiny.runs / "tiny" / name, runs / "tiny" / name
        os.makedirs(dest.parent, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest)
    return runs


def one_trial_sweep(tmp_path, corpus):
    """Another sweep file named 'tiny': its one trial is tiny_sweep's first on `corpus`."""
    fixed = dict(TINY, **{"data.path": str(corpus)})
    return write_sweep(tmp_path, f"NAME = 'tiny'\nFIXED = {fixed!r}\ndef get_sweep():\n"
                       "    return sweep.values('train.learning_rate', [1e-3])\n", name="one")


def test_tiny_sweep_end_to_end(tiny_sweep):
    from tensorboard.plugins.hparams import metadata
    runs, args, proc = tiny_sweep.runs, tiny_sweep.args, tiny_sweep.proc
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 of 3 trial(s) failed: train_fraction=0.9999" in proc.stderr
    assert "fewer than block_size+1" in proc.stdout  # The failed trial's reason.

    sweep_dir = runs / "tiny"
    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows[2:]] == ["train_fraction=0.9999"]
    assert rows[2]["status"] == "failed (exit 2)" and rows[2]["best_val_loss"] == ""
    assert {r["trial"] for r in rows[:2]} == {"lr=1e-3", "lr=1e-2"}
    best = [float(r["best_val_loss"]) for r in rows[:2]]
    assert best == sorted(best) and all(0 < b < 10 for b in best)  # Best first.
    for row in rows[:2]:
        assert row["status"] == "done" and row["steps"] == "4"
        summary = json.loads((sweep_dir / row["trial"] / "summary.json").read_text())
        assert summary["eval/best_val_loss"] == pytest.approx(float(row["best_val_loss"]),
                                                              abs=1e-4)
    assert "| trial" in (sweep_dir / "summary.md").read_text()

    # TensorBoard: the sweep names its varied fields; each trial records its values.
    exp = metadata.parse_experiment_plugin_data(
        hparams_records(str(sweep_dir / "lr=1e-3"))["_hparams_/experiment"])
    assert not glob.glob(str(sweep_dir / "events.*"))  # No empty run named ".".
    assert [h.name for h in exp.hparam_infos] == ["train.learning_rate", "data.train_fraction"]
    assert "eval/best_val_loss" in [m.name.tag for m in exp.metric_infos]
    start = metadata.parse_session_start_info_plugin_data(
        hparams_records(str(sweep_dir / "lr=1e-2"))["_hparams_/session_start_info"])
    assert start.hparams["train.learning_rate"].number_value == pytest.approx(1e-2)
    assert start.hparams["model.num_layers"].number_value == 1

    # Launching again runs only what is not finished.
    finished = sweep_dir / "lr=1e-3" / "summary.json"
    mtime = finished.stat().st_mtime
    dry = run_cli(args + ["--dry-run"], module="smallgpt_jax.sweep")
    assert dry.returncode == 0 and "(2 already finished)" in dry.stdout
    assert dry.stdout.count("# finished: ") == 2
    again = run_cli(args, module="smallgpt_jax.sweep", timeout=600)
    assert again.returncode == 1
    assert "[1/1] started train_fraction=0.9999" in again.stdout
    assert finished.stat().st_mtime == mtime
    log = (sweep_dir / "train_fraction=0.9999" / "train.log").read_text()
    assert log.count("\n=== ") == 2  # Both attempts, appended.


def test_a_finished_trial_with_other_settings_is_refused_not_reported(tiny_sweep, tmp_path):
    runs = copy_runs(tiny_sweep, tmp_path)
    tables = {n: (runs / "tiny" / n).read_text() for n in ("summary.csv", "summary.md")}
    other = write_corpus(tmp_path / "other.txt", seed=1)
    # The same sweep with another corpus on the command line; a sweep file of the
    # same name with other FIXED settings; each also in a dry run.
    renamed = one_trial_sweep(tmp_path, other)
    for path, overrides in ((tiny_sweep.path, [f"data.path={other}"]), (renamed, [])):
        for dry_run in (False, True):
            with pytest.raises(UserError) as e:
                sweep_command.run_sweep(path, overrides, str(runs), dry_run=dry_run)
            message = str(e.value)
            assert ("trial lr=1e-3 in " in message
                    and f"ran with other settings (data.path: {str(tiny_sweep.corpus)!r} -> "
                        f"{str(other)!r})" in message), message
            assert "not this sweep's trial: use another --runs_dir, or move it away" in message
    # Fewer steps than the trial ran: its numbers are for 4 steps, not for 2.
    with pytest.raises(UserError, match=r"train.num_steps: 4 -> 2\) \(2 of 3 trials clash\)"):
        sweep_command.run_sweep(tiny_sweep.path, ["train.num_steps=2"], str(runs))
    assert {n: (runs / "tiny" / n).read_text() for n in tables} == tables  # Not rewritten.


def test_a_damaged_summary_is_set_aside_and_written_again(tiny_sweep, tmp_path):
    runs = copy_runs(tiny_sweep, tmp_path, trials=["lr=1e-3"])
    summary = runs / "tiny" / "lr=1e-3" / "summary.json"
    before = json.loads(summary.read_text())
    summary.write_text('{"steps": ')  # e.g. a disk that filled up, an editor.
    one = one_trial_sweep(tmp_path, tiny_sweep.corpus)
    proc = run_cli([one, f"--runs_dir={runs}"], module="smallgpt_jax.sweep", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{summary} is damaged: set aside as {summary}.damaged" in proc.stdout
    # Written again from the final checkpoint: the same numbers, and the trial is done.
    assert json.loads(summary.read_text())["eval/best_val_loss"] == before["eval/best_val_loss"]
    assert (tmp_path / "runs" / "tiny" / "lr=1e-3" / "summary.json.damaged").exists()
    again = run_cli([one, f"--runs_dir={runs}", "--dry-run"], module="smallgpt_jax.sweep")
    assert "(1 already finished)" in again.stdout


def test_one_sweep_runner_per_folder(tiny_sweep, tmp_path):
    from smallgpt_jax.system import lock
    runs = copy_runs(tiny_sweep, tmp_path, trials=["lr=1e-3", "lr=1e-2"])
    with lock.hold_file(str(runs / "tiny" / "sweep.lock"), lambda who: None):
        with pytest.raises(UserError, match=f"another sweep runs in {runs / 'tiny'} "
                                            rf"\(PID {os.getpid()} .*use another --runs_dir"):
            sweep_command.run_sweep(tiny_sweep.path, [], str(runs))


def test_launch_script_dispatches(tmp_path):
    import subprocess
    import sys

    def launch(*args):
        env = dict(os.environ, PYTHON=sys.executable)
        return subprocess.run(["bash", os.path.join(ROOT, "launch.sh"), *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
    help_ = launch("--help")
    assert help_.returncode == 0
    for text in ("experiments/NAME.py", "--parallel=N", "tensorboard", "--coordinator=HOST:PORT",
                 "--multihost", "--runs_dir=DIR"):
        assert text in help_.stdout
    dry = launch("experiments/depth_sweep.py", "--dry-run", f"--runs_dir={tmp_path}")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("-m smallgpt_jax.main --config=configs/char_cpu.py") == 6
    for args, message in [(["configs/nope.py"], "config file configs/nope.py does not exist"),
                          (["--multihost", "experiments/lr_sweep.py"], "a sweep runs its trials"),
                          (["nonsense"], "don't know what to do with 'nonsense'"),
                          ([os.path.join(ROOT, "smallgpt_jax", "system", "errors.py")],
                           "defines neither get_config() (a config) nor get_sweep()"),
                          (["./experiments/missing.py"], "sweep file ./experiments/missing.py does not exist")]:
        proc = launch(*args)
        assert proc.returncode == 2 and proc.stderr.strip() == proc.stderr.strip().splitlines()[0]
        assert message in proc.stderr


def test_long_trial_names_are_cut_and_stay_unique(tmp_path):
    keys = ["data.path"]
    names = [sweep_load.trial_name({"data.path": "/corpora/" + c * 300}, keys) for c in "ab"]
    assert all(len(n) <= sweep_load.MAX_NAME for n in names) and names[0] != names[1]
    assert names[0].startswith("path=-corpora-aaa")
    os.makedirs(tmp_path / names[0])  # A folder the file system accepts.


def test_an_unwritable_runs_dir_is_one_line_before_any_trial(tmp_path):
    path = write_sweep(tmp_path, "def get_sweep():\n    return [{'model.dropout': 0.1}]\n")
    (tmp_path / "file").write_text("")
    proc = run_cli([path, f"--runs_dir={tmp_path / 'file' / 'runs'}"], module="smallgpt_jax.sweep")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "cannot write to" in err and "choose a --runs_dir you can write to" in err


# A stand-in trial: records the signals it gets; the first starts a "save"
# (half a second, during which a second signal would also be recorded).
SIGNAL_RECORDER = """
import os, signal, sys, time
got = []
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda signum, frame: got.append(signum))
print("handlers" + " set", flush=True)  # (Split: the log also holds the command.)
while not got:
    time.sleep(0.01)
time.sleep(0.5)
with open(os.path.join(sys.argv[1], "signals"), "w") as f:
    f.write(",".join(signal.Signals(s).name for s in got))
sys.exit(128 + got[0])
"""

SWEEP_RUNNER = """
import signal, sys
# Ctrl-C raises KeyboardInterrupt, as in a terminal, whatever this process
# inherited (a shell's background job starts with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
from smallgpt_jax.sweep.load import Trial
from smallgpt_jax.sweep.run import run_trials
trials = [Trial(w, {}, w, 1, [sys.executable, "-c", sys.argv[1], w]) for w in sys.argv[2:]]
try:
    run_trials(trials, parallel=len(trials))
except KeyboardInterrupt:
    print("runner interrupted", flush=True)
"""


def test_one_ctrl_c_gives_every_running_trial_one_signal_to_save(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    workdirs = [str(tmp_path / name) for name in ("a", "b")]
    # Its own process group, like a shell job: Ctrl-C goes to the whole group.
    runner = subprocess.Popen([sys.executable, "-c", SWEEP_RUNNER, SIGNAL_RECORDER, *workdirs],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    logs = [os.path.join(w, "train.log") for w in workdirs]
    deadline = time.time() + 60
    while not all(os.path.exists(p) and "handlers set" in open(p).read() for p in logs):
        assert time.time() < deadline and runner.poll() is None
        time.sleep(0.05)
    os.killpg(runner.pid, signal.SIGINT)  # What the terminal does on Ctrl-C.
    out, _ = runner.communicate(timeout=60)
    for w in workdirs:  # One signal each: a second one would have cut the save short.
        assert open(os.path.join(w, "signals")).read() == "SIGTERM"
    assert "runner interrupted" in out and "stopping 2 running trial(s)" in out, out


def test_a_trial_that_another_process_runs_is_not_started_again(tmp_path):
    import io
    import sys
    from smallgpt_jax.system import lock
    workdir = str(tmp_path / "trial")
    os.makedirs(workdir)
    marker = os.path.join(workdir, "started")
    trial = sweep_load.Trial("trial", {}, workdir, 1,
                             [sys.executable, "-c", f"open({marker!r}, 'w').close()"])
    out = io.StringIO()
    with lock.hold(workdir):  # An earlier launch's trial, still running.
        statuses = sweep_run.run_trials([trial], parallel=1, out=out)
    assert not os.path.exists(marker)
    assert f"skipped trial: another process is running it (PID {os.getpid()}" in out.getvalue()
    assert statuses == {"trial": sweep_run.RUNNING_ELSEWHERE}
    assert sweep_run.run_trials([trial], parallel=1, out=out) == {"trial": 0}  # Free again.
    assert os.path.exists(marker)
