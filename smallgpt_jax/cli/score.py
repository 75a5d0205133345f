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
are left out of what the model reads and reported as unknown.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
import sys
import time

from smallgpt_jax.cli import app as cli
from smallgpt_jax.system import runtime

if __name__ == "__main__":  # Before the slower imports below.
    cli.quiet_ctrl_c()

from absl import flags  # noqa: E402

from smallgpt_jax.system.errors import UserError, write_atomic  # noqa: E402

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


def read_text(path: str) -> str:
    """The file's text; a missing, empty, binary or non-UTF-8 file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"--input={path} is {'a folder' if os.path.isdir(path) else 'not a file'}; "
                        "pass a text file.")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise UserError(f"--input={path} is empty; there is nothing to score.")
    if b"\0" in data:
        raise UserError(f"--input={path} looks binary (it holds NUL bytes); pass a text file.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--input={path} is not UTF-8 text (byte {e.start} is "
                        f"{data[e.start]:#04x}); pass a text file, or convert it first "
                        "(iconv -t UTF-8).")


def token_rows(scores, tokenizer) -> list[dict]:
    """One row per token, and one per character skipped as unknown, in text order."""
    from smallgpt_jax.analysis.scoring import line_index, token_text  # Here: loads JAX (see main).
    line_of = (line_index(scores.text, range(len(scores.text))) + 1).tolist()  # From 1.
    rows = [dict(position=i, line_number=line_of[s], char_offset=int(s),
                 token=token_text(scores, i), bits=float(scores.token_bits[i]),
                 predicted=tokenizer.decode([p]) if p >= 0 else "", unknown=0)
            for i, (s, p) in enumerate(zip(scores.token_start, scores.token_predicted))]
    rows += [dict(position="", line_number=line_of[c], char_offset=c, token=scores.text[c],
                  bits=float("nan"), predicted="", unknown=1)
             for c in scores.char_unknown.nonzero()[0]]
    return sorted(rows, key=lambda r: r["char_offset"])


def write_csv(path: str, columns, rows) -> None:
    """Floats with 4 decimals, NaN (nothing scored) as an empty cell."""
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, columns, extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else
                        "" if isinstance(v, float) else v) for k, v in row.items()})
    write_atomic(path, out.getvalue())


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


def write_html(path: str, scores, title: str) -> None:
    """The text as a page: each character's background is red in proportion
    to its bits (full red at the text's 99th percentile or more); a hover
    shows the token's bits. Unknown characters are grey and struck."""
    import numpy as np  # Here: after the flags and setup_process (see main).
    known = scores.char_bits[~np.isnan(scores.char_bits)]
    top = max(1.0, float(np.percentile(known, 99))) if known.size else 1.0
    starts = list(scores.token_start) + [len(scores.text)]
    parts = []
    for i in range(len(scores.token_ids)):
        for c in range(starts[i], starts[i + 1]):
            ch, bits = scores.text[c], scores.char_bits[c]
            if scores.char_unknown[c]:
                parts.append('<span class="u" title="unknown to the vocabulary">'
                             f'{html.escape(ch)}</span>')
                continue
            alpha = 0.0 if math.isnan(bits) else min(1.0, bits / top)
            tip = f"{scores.token_bits[i]:.2f} bits" if c == starts[i] else f"{bits:.2f} bits"
            shown = "\u21b5\n" if ch == "\n" else html.escape(ch)  # A visible, shadable newline.
            parts.append(f'<span style="background:rgba(220,30,30,{alpha:.2f})" '
                         f'title="{html.escape(repr(ch))}: {tip}">{shown}</span>')
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<style>body{font:14px/1.5 monospace;margin:1em}pre{white-space:pre-wrap}"
            ".u{background:#bbb;text-decoration:line-through}</style>"
            f"<h3>{html.escape(title)}</h3><p>Red = surprise: -log2 p(character | what came "
            f"before); full red at {top:.1f} bits or more. Hover for the bits. "
            "Grey, struck: not in the vocabulary.</p><pre>" + "".join(parts) + "</pre>")
    write_atomic(path, page)


def main(argv: list[str]) -> None:
    runtime.setup_process()  # First: before NumPy or JAX start threads.
    from smallgpt_jax.analysis import scoring  # After flags: fast --help.
    from smallgpt_jax.tokenizers import tokenizer as tokenizer_lib
    with cli.user_errors():
        # Everything that can be checked without the checkpoint, first.
        step, workdir = cli.parse_step(_STEP.value), _WORKDIR.value
        if _TOP.value < 1:
            raise UserError(f"--top={_TOP.value} must be at least 1.")
        if not os.path.isdir(workdir):
            what = "is a file" if os.path.exists(workdir) else "does not exist"
            raise UserError(f"workdir {workdir} {what}; pass a training run's --workdir.")
        text = read_text(_INPUT.value)
        for path in (_OUTPUT.value, _HTML.value):
            if path:
                cli.check_output(path)
        saved = os.path.join(workdir, "tokenizer.json")
        if os.path.isfile(saved) and _UNKNOWN.value == "error":
            scoring.check_known(tokenizer_lib.load(saved), text)

        from smallgpt_jax.checkpoint.reader import load_params  # Lazy: loads orbax.
        params, model_config, tokenizer = load_params(workdir, step)
        if _STRIDE.value and not 1 <= _STRIDE.value < model_config.block_size:
            raise UserError(f"--stride={_STRIDE.value} must be between 1 and "
                            f"block_size-1={model_config.block_size - 1} (0: block_size // 2).")
        start = time.time()
        scores = scoring.score_text(params, model_config, tokenizer, text,
                                    unknown=_UNKNOWN.value, stride=_STRIDE.value or None)
        seconds = time.time() - start
        summary = dict(file=_INPUT.value, **scoring.file_summary(scores))
        per = _PER.value
        if per == "token":
            rows, columns = token_rows(scores, tokenizer), TOKEN_COLUMNS
            order, table = "bits", [("position", 8), ("line_number", 11), ("bits", 6),
                                    ("token", 8), ("predicted", 9)]
        elif per == "line":
            rows, columns = scoring.lines(scores), LINE_COLUMNS
            order, table = "bits_per_char", [("line_number", 11), ("bits_per_char", 13),
                                             ("max_bits", 8), ("max_token", 9), ("text", 70)]
        else:
            rows, columns, order, table = [summary], FILE_COLUMNS, None, None
        if _OUTPUT.value:
            write_csv(_OUTPUT.value, columns, rows)
        elif table:
            ranked = sorted((r for r in rows if not math.isnan(r[order])), key=lambda r: -r[order])
            print(f"The {min(_TOP.value, len(ranked))} most surprising {per}s of "
                  f"{len(ranked)} scored (highest {order} first):")
            print_table(ranked[:_TOP.value], table)
        else:  # One file: a field per line.
            for column in FILE_COLUMNS:
                print(f"{column:>13}  {show(summary[column], 100)}")
        if _HTML.value:
            write_html(_HTML.value, scores, f"{_INPUT.value}, scored by {workdir}")
        wrote = [p for p in (_OUTPUT.value, _HTML.value) if p]
        print(f"{_INPUT.value}: {summary['chars']} characters, {summary['tokens']} tokens, "
              f"{summary['bits_per_char']:.3f} bits/char, perplexity {summary['perplexity']:.2f} "
              f"({len(scores.token_ids) / seconds:.0f} tokens/s, compiling included)"
              + (f"; {summary['unknown']} unknown character(s) not scored: "
                 + ", ".join(repr(c) for c in scores.unknown[:20]) if scores.unknown else "")
              + (f"; wrote {', '.join(wrote)}" if wrote else ""), file=sys.stderr)


def run() -> None:
    flags.mark_flag_as_required("workdir")
    flags.mark_flag_as_required("input")
    cli.run_app(main)


if __name__ == "__main__":
    run()
