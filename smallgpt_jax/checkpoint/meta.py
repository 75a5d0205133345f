"""A checkpoint's `meta` item: the run's metadata as one typed value, and its versions.

The `meta` item is JSON next to the saved state: the full config, the
tokenizer with its vocabulary, the seed and step (together they are the
whole RNG state, since batches and dropout keys are pure functions of them),
this step's validation loss if it was evaluated, the best so far, the newest
evaluation's numbers, a checksum per array, the data's fingerprint, and the
steps this line of checkpoints went back to with resume_step.

`FORMAT` is its layout's version. `read_meta` is the one place that reads it:
a checkpoint of an older layout is brought to this one by `upgrade`, one
from a newer smallgpt_jax is one clear error, and a file edited by hand
(valid JSON, but not the types written) is damage (`problem`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from smallgpt_jax.checkpoint.faults import NUMBER, is_a
from smallgpt_jax.config import base_config, flatten
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers import tokenizer as tokenizer_lib

FORMAT = 1  # Version of the `meta` layout; read by read_meta.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Meta:
    """A checkpoint's metadata (its JSON fields, in the order they are written)."""

    step: int
    seed: int
    device_count: int | None = None  # Devices that wrote it (set by save).
    val_loss: float | None = None  # This step's, if it was evaluated.
    best_val_loss: float | None = None  # None (or inf, saved as None): none yet.
    train_time_s: float | None = None  # Wall time of training so far, over resumes.
    eval: dict[str, float] = dataclasses.field(default_factory=dict)  # The newest evaluation.
    # Verified by every restore: data changed on disk is an error, not a surprise.
    checksums: dict[str, int] = dataclasses.field(default_factory=dict)  # Set by save.
    config: dict[str, Any]
    tokenizer: dict[str, Any]
    data_fingerprint: str = ""  # Corpus and split (store/manifest.py).
    # Steps gone back to with resume_step, oldest first (set by save).
    branch_points: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The `meta` item as saved."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"format": FORMAT, **fields, "branch_points": list(self.branch_points),
                "best_val_loss": self.best_val_loss if math.isfinite(self.best) else None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Meta":
        """The Meta of a `meta` item in this FORMAT's layout (see `upgrade`)."""
        points = d.get("branch_points")
        return cls(step=d.get("step"), seed=d.get("seed"), device_count=d.get("device_count"),
                   val_loss=d.get("val_loss"), best_val_loss=d.get("best_val_loss"),
                   train_time_s=d.get("train_time_s"), eval=dict(d.get("eval") or {}),
                   checksums=dict(d.get("checksums") or {}), config=d.get("config"),
                   tokenizer=d.get("tokenizer"), data_fingerprint=d.get("data_fingerprint") or "",
                   branch_points=tuple(p for p in points if isinstance(p, int))
                   if isinstance(points, list) else ())

    @property
    def best(self) -> float:
        """The best validation loss so far (inf: none yet)."""
        return math.inf if self.best_val_loss is None else float(self.best_val_loss)


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A `meta` item of an older layout (no "format" is format 1) in this one's.

    Checkpoints written before the newest evaluation was kept (`eval`) have
    its two losses only."""
    d = dict(d)
    if not d.get("eval"):
        old = {"eval/val_loss": d.get("val_loss"), "eval/best_val_loss": d.get("best_val_loss")}
        d["eval"] = {k: v for k, v in old.items() if v is not None}
    d["format"] = FORMAT
    return d


class Unreadable(Exception):
    """A `meta` item that cannot be used; `foreign`: not one this package wrote."""

    def __init__(self, why: str, foreign: bool = False):
        super().__init__(why)
        self.foreign = foreign


def is_ours(meta: Any) -> bool:
    """Whether a checkpoint's `meta` item is one this package wrote."""
    return isinstance(meta, dict) and {"config", "tokenizer"} <= meta.keys()


def read_meta(d: Any, where: str) -> Meta:
    """The Meta of checkpoint `where`'s `meta` item `d` (JSON as read).

    Unreadable if it is not ours or is damaged; UserError if a newer
    smallgpt_jax wrote it."""
    if not is_ours(d):
        raise Unreadable("meta/metadata lacks the config or tokenizer", foreign=True)
    why = problem(d)
    if why:
        raise Unreadable(why)
    version = d.get("format", 1)
    if version > FORMAT:
        raise UserError(f"checkpoint {where} was written by a newer smallgpt_jax (meta format "
                        f"{version}; this version reads up to {FORMAT}): update smallgpt_jax "
                        "to use it.")
    return Meta.from_json(upgrade(d))


# The fields of a `meta` item and their JSON types. A field that an older
# checkpoint lacks, or null, is fine.
_TYPES = {"format": int, "step": int, "seed": int, "device_count": int, "val_loss": NUMBER,
          "best_val_loss": NUMBER, "train_time_s": NUMBER, "eval": dict, "checksums": dict,
          "data_fingerprint": str, "branch_points": list, "config": dict, "tokenizer": dict}


def problem(meta: dict) -> str | None:
    """Why a checkpoint's meta item (JSON, which anyone can edit) cannot be
    used: a field of the wrong type, a config field whose type is not the
    base config's, a tokenizer that cannot be rebuilt. None when it can."""
    def field(name: str, value: Any) -> str:
        return f"meta/metadata is damaged: {name} is {str(value)[:40]!r}"
    for key, kind in _TYPES.items():
        if meta.get(key) is not None and not is_a(meta[key], kind):
            return field(key, meta[key])
    for key, value in {**(meta.get("eval") or {}), **(meta.get("checksums") or {})}.items():
        if not is_a(value, NUMBER):
            return field(key, value)
    base = base_config().to_dict()
    for key, value in meta["config"].items():  # A section (model, train...) must stay one.
        if isinstance(base.get(key), dict) and not isinstance(value, dict):
            return field(f"config.{key}", value)
    base = flatten(base)
    for key, value in flatten(meta["config"]).items():
        default = base.get(key)  # (None: a field from another version, or without a type.)
        if default is not None and not is_a(
                value, NUMBER if isinstance(default, float) else type(default)):
            return field(f"config.{key}", value)
    try:
        tokenizer_lib.from_dict(meta["tokenizer"])
    except Exception as e:  # Whatever a tokenizer's own library makes of its fields.
        return f"meta/metadata is damaged: its tokenizer cannot be rebuilt ({str(e)[:80]})"
    return None
