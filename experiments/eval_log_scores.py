r"""How well do per-line surprise scores find the injected log anomalies?

    python experiments/eval_log_scores.py --scores=runs/logs/test_scores.csv \
        --labels=runs/logs/test_labels.csv

--scores is the CSV of `python -m smallgpt_jax.score --per=line --output=...`,
--labels the one experiments/make_logs.py wrote. For each score column
(bits_per_char, max_bits, bits) prints the ROC AUC (the chance that a random
anomalous line scores above a random normal one; 0.5 is guessing) and the
precision and recall among the k highest-scoring lines (k = the number of
anomalous lines unless --top says otherwise), then the AUC of each anomaly
kind against the normal lines.
"""

import csv
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from smallgpt_jax.cli import app as cli  # noqa: E402
from smallgpt_jax.system.errors import UserError  # noqa: E402

COLUMNS = ("bits_per_char", "max_bits", "bits")


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney U / (positives * negatives), ties counted half."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average rank within each group of tied scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, n in zip(first, counts):
        ranks[order[start:start + n]] = start + (n + 1) / 2
    pos, neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def precision_recall_at(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, float]:
    top = np.argsort(-scores, kind="mergesort")[:k]
    hits = labels[top].sum()
    return float(hits / k), float(hits / labels.sum())


def read(scores_path: str, labels_path: str):
    with open(scores_path, encoding="utf-8", newline="") as f:
        rows = {int(r["line_number"]): r for r in csv.DictReader(f)}
    with open(labels_path, encoding="utf-8", newline="") as f:
        labels = list(csv.DictReader(f))
    missing = [r["line_number"] for r in labels if int(r["line_number"]) not in rows]
    if missing:
        raise UserError(f"{scores_path} has no score for line(s) {', '.join(missing[:5])}: "
                        "score the log the labels describe, with --per=line.")
    n = [int(r["line_number"]) for r in labels]
    table = {c: np.array([float(rows[i][c] or "nan") for i in n]) for c in COLUMNS}
    is_anomaly = np.array([r["label"] == "1" for r in labels])
    return table, is_anomaly, np.array([r["kind"] for r in labels])


def _define_flags() -> None:
    """Defined only when run as a command, so importing this file defines none."""
    flags.DEFINE_string("scores", None, "Per-line CSV from smallgpt_jax.cli.score.")
    flags.DEFINE_string("labels", None, "test_labels.csv from make_logs.py.")
    flags.DEFINE_integer("top", 0, "k for precision/recall (0: the number of anomalies).")
    flags.mark_flags_as_required(["scores", "labels"])


def main(argv: list[str]) -> None:
    FLAGS = flags.FLAGS
    with cli.user_errors():
        table, labels, kinds = read(FLAGS.scores, FLAGS.labels)
    k = FLAGS.top or int(labels.sum())
    print(f"{len(labels)} lines, {labels.sum()} anomalous; precision and recall in the top {k}")
    print(f"| score | ROC AUC | precision@{k} | recall@{k} |\n|---|---|---|---|")
    for column, scores in table.items():
        scores = np.nan_to_num(scores, nan=-np.inf)
        precision, recall = precision_recall_at(scores, labels, k)
        print(f"| {column} | {roc_auc(scores, labels):.3f} | {precision:.2f} | {recall:.2f} |")
    print("\nROC AUC of each kind against the normal lines:")
    names = sorted(set(kinds[labels]))
    print("| score | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for column, scores in table.items():
        scores = np.nan_to_num(scores, nan=-np.inf)
        aucs = []
        for name in names:
            keep = (kinds == name) | ~labels
            aucs.append(roc_auc(scores[keep], labels[keep]))
        print(f"| {column} | " + " | ".join(f"{x:.3f}" for x in aucs) + " |")


if __name__ == "__main__":
    _define_flags()
    cli.run_app(main)
