"""A running sweep's live lines, read from the progress files its trials write."""

import io
import json

from smallgpt_jax.sweep import live


def _progress(workdir, **values):
    (workdir / live.PROGRESS).write_text(json.dumps(values))


def test_a_trial_line_shows_step_loss_and_eta_or_that_it_is_starting(tmp_path):
    trial = live.Running("lr=1e-3", str(tmp_path), started=1000.0)
    assert live.read_progress(str(tmp_path), 1000.0) is None  # No file yet.
    line = live.trial_line(trial, None, 1042.0, 8)
    assert line == "  lr=1e-3  starting (running 00:42; before step 1)"
    _progress(tmp_path, step=120, total=500, loss=2.13449, eta_s=83.0,
              eta_without_evals=True, time=1050.0)
    progress = live.read_progress(str(tmp_path), 1000.0)
    assert live.trial_line(trial, progress, 1060.0, 8) == (
        "  lr=1e-3  step 120/500 loss 2.1345 ETA 01:23+eval (running 01:00)")
    # A file from an earlier launch of the trial is not this launch's progress.
    assert live.read_progress(str(tmp_path), 1051.0) is None
    (tmp_path / live.PROGRESS).write_text("{")  # Being replaced, or damaged.
    assert live.read_progress(str(tmp_path), 0.0) is None


def test_the_sweep_eta_shares_the_work_left_among_the_slots():
    # Two running trials, 100 s and 300 s left; they will have taken 400 s each.
    running = [(300.0, 100.0), (100.0, 300.0)]
    assert live.sweep_eta(running, [], waiting=0, parallel=2) == 300.0  # The longest one.
    # Two more trials of 400 s each: (100 + 300 + 800) / 2 slots.
    assert live.sweep_eta(running, [], waiting=2, parallel=2) == 600.0
    # Measured trials replace the projection: (100 + 300 + 2 * 200) / 2.
    assert live.sweep_eta(running, [200.0], waiting=2, parallel=2) == 400.0
    assert live.sweep_eta([(5.0, None)], [], waiting=1, parallel=1) is None  # Not known yet.
    # Before its first step a trial is expected to take as long as a finished one.
    assert live.sweep_eta([(50.0, None)], [200.0], waiting=1, parallel=1) == 350.0
    assert live.sweep_eta([], [], waiting=0, parallel=1) == 0.0


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_board_redraws_in_a_terminal_and_prints_now_and_then_in_a_log(tmp_path):
    running = [live.Running("a", str(tmp_path), 0.0)]
    _progress(tmp_path, step=5, total=10, loss=1.0, eta_s=10.0, time=1.0)
    terminal = _Terminal()
    board = live.Board(terminal, total=3, parallel=1)
    board.show(running, waiting=1, now=10.0)
    first = terminal.getvalue()
    assert first.splitlines() == [
        "sweep: 1/3 trials ended, 1 running, 1 waiting; ETA 00:30",
        "  a step  5/10 loss 1.0000 ETA 00:10 (running 00:10)"]
    board.show(running, waiting=1, now=11.0)
    assert terminal.getvalue()[len(first):].startswith("\x1b[F\x1b[K" * 2)  # Drawn over.
    board.clear()
    assert terminal.getvalue().endswith("\x1b[F\x1b[K" * 2) and board.drawn == 0

    log = io.StringIO()
    board = live.Board(log, total=1, parallel=1)
    for now in (100.0, 130.0, 100.0 + live.LOG_EVERY_S):
        board.show(running, waiting=0, now=now)
    assert log.getvalue().count("sweep: ") == 2 and "\x1b" not in log.getvalue()
