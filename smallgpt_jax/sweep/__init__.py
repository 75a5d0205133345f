"""Sweeps: the trials an experiment file's `get_sweep()` returns.

    from smallgpt_jax import sweep

    CONFIG = "configs/char_cpu.py"
    def get_sweep():
        return sweep.product(sweep.values("train.learning_rate", [3e-4, 1e-3]),
                             sweep.values("model.dropout", [0.0, 0.1]))

`values`, `product` and `zipit` build such lists (a plain list of dicts works
too). `python -m smallgpt_jax.sweep EXPERIMENT_FILE` runs them (command.py):
load.py reads and checks the file, run.py runs the trials, report.py writes
the tables. An experiment file imports this file only (and errors).
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

from smallgpt_jax.system.errors import UserError

Overrides = dict[str, Any]  # {"train.learning_rate": 3e-4, ...}: one trial.


def values(key: str, vals: Iterable[Any]) -> list[Overrides]:
    """One trial per value of one config field: [{key: v} for v in vals]."""
    return [{key: v} for v in vals]


def product(*sweeps: Sequence[Overrides]) -> list[Overrides]:
    """Every combination (the grid): product(values(a, [1, 2]), values(b, [3, 4]))
    gives 4 trials. The sweeps must set different fields."""
    out = []
    for combo in itertools.product(*sweeps):
        merged: Overrides = {}
        for overrides in combo:
            shared = set(merged) & set(overrides)
            if shared:
                raise UserError(f"sweep.product: {', '.join(sorted(shared))} is set by "
                                "two of its sweeps; each field may vary in one only.")
            merged.update(overrides)
        out.append(merged)
    return out


def zipit(*sweeps: Sequence[Overrides]) -> list[Overrides]:
    """Trials side by side, like zip: zipit(values(a, [1, 2]), values(b, [3, 4]))
    gives {a: 1, b: 3} and {a: 2, b: 4}. The sweeps must have the same length.
    (The name is that of the `hyper` sweep library; it does not hide zip.)"""
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise UserError(f"sweep.zipit needs sweeps of one length, got {sorted(lengths)}.")
    return [dict(kv for overrides in combo for kv in overrides.items())
            for combo in zip(*sweeps)]
