"""What a run shows: the progress line's rate and ETA, the end-of-run
summary, and which config fields TensorBoard lists as hyperparameters."""

import io
import json
import os
import sys

import jax
import pytest

from conftest import tiny_config
from smallgpt_jax.system import console
from smallgpt_jax.training import reporting, run_summary


def test_evaluations_left_count_the_final_one():
    bar = reporting.ProgressBar(1000, 300)
    assert [bar.evals_left(s) for s in (0, 299, 300, 900, 999, 1000)] == [4, 4, 3, 1, 1, 0]
    assert reporting.ProgressBar(1000, 250).evals_left(500) == 2  # 750 and 1000.
    assert reporting.ProgressBar(1000, 0).evals_left(0) == 0


def test_eta_counts_training_at_its_own_rate_and_adds_the_evaluations_left(monkeypatch):
    bar = reporting.ProgressBar(1000, 250, stream=io.StringIO())
    monkeypatch.setattr(reporting.time, "time", lambda: 100.0)
    bar.update(100, 2.0, 1.0)  # Timing starts at the first update (after compiling).
    assert bar.eta(100, 100.0) == "--:--"
    # Before an evaluation was measured: training only (0.1 s a step), and says so.
    assert bar.eta(200, 110.0) == "01:20+eval"
    bar.paused(40.0)  # One evaluation took 40 s, which is not training: at
    # step 250, 100 s in, 60 s trained 150 steps (0.4 s a step); 750 steps are
    # left (300 s) and 3 evaluations (120 s).
    assert bar.eta(250, 200.0) == "07:00"


def test_end_of_run_says_where_things_are_and_what_to_run_next():
    final = {"steps": 2200, "wall_time_s": 163.0, "eval/train_loss": 1.55,
             "eval/val_loss": 1.74, "eval/val_bpc": 2.51}
    text = run_summary.end_of_run(final, "runs/my run")
    assert "2200 steps in 02:43 (all runs" in text and "val 1.7400" in text and "2.510 bits" in text
    assert "'runs/my run'/checkpoints" not in text and "runs/my run/checkpoints" in text
    # Commands are pasteable: the workdir is quoted for the shell.
    assert "python -m smallgpt_jax.sample --workdir='runs/my run'" in text
    # TensorBoard opens on the folder of runs, so it names the run "my run", not ".".
    assert "tensorboard --logdir runs " in text and "?smoothing=0" in text
    assert "tensorboard --logdir . " in run_summary.end_of_run(final, "alone")
    assert sum("--what=" in line for line in text.splitlines()) == 3
    assert "in 02:43, evaluation 00:09 of it" in run_summary.end_of_run(
        {**final, "eval_time_s": 9.5}, "w")
    # The part before step 1 (imports, data, setup) apart.
    assert "in 02:43, 00:31 before step 1, evaluation 00:09 of it" in run_summary.end_of_run(
        {**final, "eval_time_s": 9.5, "setup_time_s": 31.0}, "w")
    # A run with nothing left to train has no final evaluation to report.
    assert "val" not in run_summary.end_of_run({"steps": 5}, "w").split("\n")[1]


def test_hparams_are_what_is_trained_not_how_the_run_is_carried_out():
    c = tiny_config()
    h = reporting.flat_hparams(c.to_dict())  # The recorded dict, not the ConfigDict.
    assert {"model.num_layers", "train.learning_rate", "seed", "data.tokenizer",
            "data.dataset"} <= set(h)
    assert not set(h) & set(reporting.NOT_HPARAMS)
    assert not {"data.path", "data.vocab_size", "data.end_of_text", "data.fit_max_chars"} & set(h)
    c.data.path, c.data.tokenizer = "corpus.txt", "bpe"
    h = reporting.flat_hparams(c.to_dict())
    assert h["data.path"] == "corpus.txt" and "data.dataset" not in h
    assert {"data.vocab_size", "data.end_of_text"} <= set(h)


def test_say_is_silent_off_process_0(monkeypatch, capsys):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    console.say("resuming from checkpoint step 5")
    reporting.ProgressBar(10, stream=sys.stderr).message("nothing to train")
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    console.say("resuming from checkpoint step 5")
    assert capsys.readouterr() == ("", "resuming from checkpoint step 5\n")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_message_clears_the_bar_drawn_in_a_terminal_once():
    terminal = _Terminal()
    bar = reporting.ProgressBar(10, stream=terminal)
    bar.update(1, 2.0, 1.0)
    console.say("a note", terminal)
    console.say("another", terminal)
    drawn, note = terminal.getvalue().rsplit("\r\x1b[K", 1)
    assert drawn.startswith("\rstep      1/10") and note == "a note\nanother\n"


def _tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(logdir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_evaluations_draw_train_and_val_on_one_card_that_sorts_first(tmp_path):
    run = tmp_path / "lr=3e-3"
    run.mkdir()
    with reporting.Writer(str(run)) as writer:
        writer.scalars(5, {"train/loss": 2.5})  # Not an evaluation: no card.
        writer.scalars(10, {"eval/train_loss": 2.0, "eval/val_loss": 2.25})
        writer.scalars(20, {"eval/train_loss": 1.5, "eval/val_loss": 1.75})
    # One tag in two sub-runs: TensorBoard draws them as two named lines on one card.
    assert sorted(os.listdir(run / "train") + os.listdir(run / "val"))[0].startswith("events")
    assert _tags(str(run / "train")) == {"Loss/lr_3e-3": [(10, 2.0), (20, 1.5)]}
    assert _tags(str(run / "val")) == {"Loss/lr_3e-3": [(10, 2.25), (20, 1.75)]}
    own = _tags(str(run))
    assert "eval/val_loss" in own and "train/loss" in own and "Loss/lr_3e-3" not in own
    # Capitals sort before every tag the run writes (TensorBoard orders cards by tag).
    assert sorted([*own, "Loss/lr_3e-3", "views/attention/layer_0"])[0] == "Loss/lr_3e-3"


def test_progress_file_has_the_step_loss_and_eta(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    bar = reporting.ProgressBar(1000, 0, stream=io.StringIO(), progress_file=str(path))
    monkeypatch.setattr(reporting.time, "time", lambda: 100.0)
    bar.update(100, 2.0, 1.0)
    assert json.loads(path.read_text())["eta_s"] is None  # Not known before a second point.
    monkeypatch.setattr(reporting.time, "time", lambda: 110.0)
    bar.update(200, 1.5, 1.0)
    progress = json.loads(path.read_text())
    assert progress == {"step": 200, "total": 1000, "loss": 1.5, "eta_s": 80.0,
                        "eta_without_evals": False, "time": 110.0}


def test_wall_time_counts_from_the_start_and_a_finished_run_says_its_real_time(tmp_path):
    from smallgpt_jax.training import loop
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 200)
    config = tiny_config(**{"data.path": str(corpus), "train.num_steps": 2,
                            "train.eval_every": 2, "train.sample_tokens": 0})
    workdir = str(tmp_path / "run")
    # As the command line does: the run started (imports, data) 100 s before training.
    result = loop.train_and_evaluate(config, workdir, started=reporting.time.time() - 100.0)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["setup_time_s"] >= 100.0 and summary["wall_time_s"] > summary["setup_time_s"]
    assert result.metrics == summary
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert (progress["step"], progress["total"]) == (2, 2)
    # Run again: nothing to train, and the summary says the run's real time.
    again = loop.train_and_evaluate(config, workdir)
    assert again.metrics["wall_time_s"] == pytest.approx(summary["wall_time_s"], abs=1e-3)
    assert run_summary.end_of_run(again.metrics, workdir).startswith(
        f"--- done: 2 steps in {console.clock(summary['wall_time_s'])}")
    assert summary["wall_time_s"] > 100.0  # Not 00:00.
