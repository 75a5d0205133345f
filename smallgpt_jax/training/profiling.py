"""Watching a run from outside the loop: timing hooks and a profiler window.

* `Hooks`: callbacks `loop.train_and_evaluate` makes at the moments a timing
  tool needs (a step launched, a log point, an evaluation, a save). The base
  class does nothing; `benchmarks/time_to_loss.py` overrides them.
* `ProfileWindow`: `config.train.profile_steps='A:B'` writes a `jax.profiler`
  trace of steps A to B into the run's workdir, where TensorBoard's profile
  tab finds it (`pip install tensorboard-plugin-profile`, then
  `tensorboard --logdir WORKDIR`, PROFILE); the `.trace.json.gz` beside it
  opens in Perfetto's trace viewer without TensorBoard.
"""

from __future__ import annotations

import jax

from smallgpt_jax.config import parse_steps


class Hooks:
    """Called by the training loop; override what you need. Steps count from
    1 (as the progress bar does). Every method here does nothing."""

    def step_launched(self, step: int, metrics: dict) -> None:
        """Step `step` was dispatched. `metrics` are device values: reading
        one waits until the step has run (the loop itself does not wait)."""

    def logged(self, step: int) -> None:
        """A log point: every step up to `step` has finished running."""

    def evaluated(self, step: int, losses: dict[str, float], seconds: float) -> None:
        """An evaluation after `step` ({'train': ..., 'val': ...}), which took
        `seconds` (samples and pictures not included)."""

    def saved(self, step: int) -> None:
        """A checkpoint of `step` was started (it is written in the background)."""


class ProfileWindow:
    """Traces steps first..last (config.train.profile_steps) with jax.profiler.

    The trace starts before step `first` is launched and stops once step
    `last` has finished on the device, so it holds their host work (batches,
    dispatch) and device work; each step is marked (StepTraceAnnotation), so
    TensorBoard's profile tab shows them as steps. The files go to
    `logdir/plugins/profile/<time>/` (the .xplane.pb TensorBoard reads and a
    Perfetto trace.json.gz).
    """

    def __init__(self, spec: str, logdir: str):
        self.window = parse_steps(spec)
        self.logdir = logdir
        self.active = False

    def before_step(self, step: int) -> None:
        if self.window and step == self.window[0] and jax.process_index() == 0:
            jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
            self.active = True

    def after_step(self, step: int, outputs) -> bool:
        """Stops the trace after step `last`; True when it did."""
        if self.active and step == self.window[1]:
            jax.block_until_ready(outputs)  # The device work of the last step too.
            self.close()
            return True
        return False

    def close(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
