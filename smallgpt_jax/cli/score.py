r"""Command line: how surprised is a trained model by each token of a file?

    python -m smallgpt_jax.score --workdir=runs/char_cpu --input=some.txt
    python -m smallgpt_jax.score --workdir=runs/char_cpu --input=some.txt \
        --per=line --output=lines.csv --html=surprise.html

Surprise is -log2 p(token | what came before), in bits (analysis/scoring.py says how
texts longer than the context are windowed). --per picks the rows:
  token  position, line_number, char_offset, token, bits, predicted, unknown
  line   line_number, bits_per_char, perplexity, tokens, chars, bits, unknown,
         max_bits, max_token, text      (the default)
  file   file, bits_per_char, perplexity, tokens, chars, bits, unknown, max_bits, max_token
--output=FILE.csv writes them all as CSV; without it the --top most
surprising rows are printed as a table. --html=FILE writes the text with
each character shaded by its surprise (open it in a browser; hover for bits).
Characters a character vocabulary lacks are an error, or with --unknown=skip
are left out of what the model reads and reported as unknown. The file is
read in pieces (analysis/score_file.py): any size fits in memory. The vocabulary is
the checkpoint's own, not the workdir's copy (tokenizer.json).
"""

from __future__ import annotations

import csv
import math
import os
import time
from typing import Iterable

from smallgpt_jax.cli import app as cli
from smallgpt_jax.system import console, runtime

if __name__ == "__main__":  # Before the slower imports below.
    cli.quiet_ctrl_c()

from absl import flags  # noqa: E402

from smallgpt_jax.system.errors import UserError, atomic_file  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir (with checkpoints).")
_INPUT = flags.DEFINE_string("input", None, "The UTF-8 text file to score.")
_STEP = flags.DEFINE_string("step", "latest", "Checkpoint to load: 'latest', 'best' or a step.")
_PER = flags.DEFINE_enum("per", "line", ["token", "line", "file"],
                         "One row per token, line or file.")
_OUTPUT = flags.DEFINE_string("output", None, "Write every row to this CSV file.")
_TOP = flags.DEFINE_integer("top", 10, "Without --output: print this many most surprising rows.")
_HTML = flags.DEFINE_string("html", None,
                            "Also write the text shaded by surprise to this HTML file.")
_UNKNOWN = flags.DEFINE_enum("unknown", "error", ["error", "skip"],
                             "Characters the vocabulary lacks: an error, or skip (reported).")
_STRIDE = flags.DEFINE_integer("stride", 0, "Sliding-window stride in tokens; 0: block_size // 2.")

TOKEN_COLUMNS = ("position", "line_number", "char_offset", "token", "bits", "predicted", "unknown")
LINE_COLUMNS = ("line_number", "bits_per_char", "perplexity", "tokens", "chars", "bits", "unknown",
                "max_bits", "max_token", "text")
FILE_COLUMNS = ("file",) + LINE_COLUMNS[1:-1]
COLUMNS = {"token": TOKEN_COLUMNS, "line": LINE_COLUMNS, "file": FILE_COLUMNS}


def csv_cell(value):
    """Floats with 4 decimals, NaN (nothing scored) as an empty cell."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return value


def write_csv(path: str, columns, rows: Iterable[dict]) -> None:
    """Writes the rows as they come; `path` appears when they are all written."""
    with atomic_file(path, newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: csv_cell(v) for k, v in row.items()})


QUOTED = ("token", "predicted", "max_token")  # Shown in quotes: a space is visible.


def show(value, width: int, quote: bool = False) -> str:
    """A cell for the terminal: newlines and tabs escaped, cut to `width`."""
    if isinstance(value, str):
        text = value.translate({10: "\\n", 9: "\\t", 13: "\\r"})
        text = f"'{text}'" if quote else text
    else:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def print_table(rows: list[dict], columns: list[tuple[str, int]]) -> None:
    print("  ".join(name.ljust(w) for name, w in columns).rstrip())
    for row in rows:
        print("  ".join(show(row[name], w, name in QUOTED).ljust(w)
                        for name, w in columns).rstrip())


TABLES = {  # What --top ranks by, and the table's columns with their widths.
    "token": ("bits", [("position", 8), ("line_number", 11), ("bits", 6), ("token", 8),
                       ("predicted", 9)]),
    "line": ("bits_per_char", [("line_number", 11), ("bits_per_char", 13), ("max_bits", 8),
                               ("max_token", 9), ("text", 70)])}
PROGRESS_BYTES = 1 << 20  # A progress line for files at least this large.


def check_outputs(path: str) -> None:
    """--output and --html can be written, and neither is the --input file
    (or the other one): the results would replace the text they are of."""
    seen = {"input": path}
    for flag, out in (("output", _OUTPUT.value), ("html", _HTML.value)):
        if not out:
            continue
        cli.check_output(out, flag)
        for other, taken in seen.items():
            if os.path.realpath(out) == os.path.realpath(taken) or (
                    os.path.exists(out) and os.path.samefile(out, taken)):
                raise UserError(f"--{flag}={out} is the --{other} file; name another file.")
        seen[flag] = out


def main(argv: list[str]) -> None:
    runtime.setup_process()  # First: before NumPy or JAX start threads.
    from smallgpt_jax.analysis import score_file, scoring  # After flags: fast --help.
    with cli.user_errors():
        # Everything that can be checked without the checkpoint, first.
        step, workdir, path = cli.parse_step(_STEP.value), _WORKDIR.value, _INPUT.value
        if _TOP.value < 1:
            raise UserError(f"--top={_TOP.value} must be at least 1.")
        if not os.path.isdir(workdir):
            what = "is a file" if os.path.exists(workdir) else "does not exist"
            raise UserError(f"workdir {workdir} {what}; pass a training run's --workdir.")
        found = score_file.survey(path)
        check_outputs(path)

        from smallgpt_jax.checkpoint.reader import load_checkpoint  # Lazy: loads orbax.
        params, model_config, tokenizer, step = load_checkpoint(workdir, step)
        if _STRIDE.value and not 1 <= _STRIDE.value < model_config.block_size:
            raise UserError(f"--stride={_STRIDE.value} must be between 1 and "
                            f"block_size-1={model_config.block_size - 1} (0: block_size // 2).")
        unknown = scoring.unknown_characters(tokenizer, found.distinct)
        if unknown and _UNKNOWN.value == "error":
            scoring.check_known(tokenizer, unknown)  # Its error names them.
        if len(unknown) == len(found.distinct):
            raise UserError(f"every character of --input={path} is unknown to the model's "
                            "vocabulary; there is nothing to score.")
        start = time.time()
        summary, top = score(params, model_config, tokenizer, found, unknown,
                             f"{path}, scored by {workdir} (step {step})")
        seconds = time.time() - start
        if top:
            print(f"The {len(top.heap)} most surprising {_PER.value}s of {top.count} scored "
                  f"(highest {top.key} first):")
            print_table(top.rows(), TABLES[_PER.value][1])
        elif not _OUTPUT.value:  # One file: a field per line.
            for column in FILE_COLUMNS:
                print(f"{column:>13}  {show(summary[column], 100)}")
        if found.changed(path):
            console.say(f"note: {path} changed while it was scored; these are the numbers of its "
                        f"first {found.size:,} bytes as they were read.")
        wrote = [p for p in (_OUTPUT.value, _HTML.value) if p]
        console.say(f"{path}: {summary['chars']} characters, {summary['tokens']} tokens, "
                    f"{summary['bits_per_char']:.3f} bits/char, "
                    f"perplexity {summary['perplexity']:.2f} "
                    f"under checkpoint step {step} ({summary['tokens'] / seconds:.0f} tokens/s, "
                    "compiling included)"
                    + (f"; {summary['unknown']} unknown character(s) not scored: "
                       + ", ".join(repr(c) for c in unknown[:20]) if unknown else "")
                    + (f"; wrote {', '.join(wrote)}" if wrote else ""))


def score(params, model_config, tokenizer, found, unknown: list[str], title: str):
    """Scores --input piece by piece; each finished row goes to --output or
    the --top rows at once, each piece to the --html page. Returns (the
    file's row, the Top rows or None)."""
    from smallgpt_jax.analysis import score_file, scoring  # Loads JAX: see main.
    from smallgpt_jax.store import corpus
    per, path = _PER.value, _INPUT.value
    rows = score_file.Rows(per, tokenizer)
    top = None if _OUTPUT.value or per == "file" else score_file.Top(_TOP.value, TABLES[per][0])
    progress = corpus.Progress("scoring", found.size, enabled=found.size >= PROGRESS_BYTES)
    page = score_file.Page(os.path.dirname(os.path.abspath(_HTML.value))) if _HTML.value else None

    def finished_rows():
        for scores in scoring.score_pieces(params, model_config, tokenizer,
                                           score_file.pieces(path, found.size), unknown,
                                           _STRIDE.value or None):
            yield from rows.add(scores)
            if page:
                page.add(scores)
            progress.add(nbytes=len(scores.text.encode("utf-8")), ntokens=len(scores.token_ids))
        yield from rows.finish(file=path)
        progress.done()

    try:
        if _OUTPUT.value:
            write_csv(_OUTPUT.value, COLUMNS[per], finished_rows())
        else:
            for row in finished_rows():
                if top:
                    top.add(row)
        if page:
            page.write(_HTML.value, title)
    finally:
        if page:
            page.close()
    return rows.total.row(file=path), top


def run() -> None:
    flags.mark_flag_as_required("workdir")
    flags.mark_flag_as_required("input")
    cli.run_app(main)


if __name__ == "__main__":
    run()
