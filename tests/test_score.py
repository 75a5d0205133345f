"""Scoring text (smallgpt_jax.analysis.scoring, the `score` command) and hidden states
(smallgpt_jax.analysis.representations): surprise is -log2 softmax, windows give
every token its context, aggregates add up, bad input is one line, and a
model trained on normal logs ranks injected anomalies high."""

import csv
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_file, run_cli, tiny_config
from smallgpt_jax.analysis import representations, scoring, windows
from smallgpt_jax.model import GPT, model_config
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers.tokenizer import ByteTokenizer, CharTokenizer, save as save_tokenizer
from test_sample_cli import assert_one_clear_line
from test_generation import random_model

CHARS = "\n :EMORabcd"  # The random model's 11-character vocabulary.
TEXT = "ROMEO: abc dab cab\nMORE: bad a cab dab\n" * 3  # 117 characters > block_size 16.


def reference_bits(cfg, params, seq):
    """-log2 softmax(logits)[next token] of one forward pass over `seq` (fits the context)."""
    logits_TV = GPT(cfg).apply({"params": params}, jnp.asarray(seq, jnp.int32)[None])[0]
    logp_TV = jax.nn.log_softmax(logits_TV[:-1], axis=-1)
    return -np.asarray(logp_TV)[np.arange(len(seq) - 1), seq[1:]] / np.log(2)


@pytest.mark.parametrize("n,T,stride", [(2, 16, 8), (16, 16, 8), (17, 16, 8), (117, 16, 8),
                                        (100, 16, 1), (100, 16, 15), (1000, 7, 3)])
def test_window_plan_covers_every_position_once_with_half_a_window(n, T, stride):
    plan = scoring.window_plan(n, T, stride)
    owned = np.concatenate([np.arange(first, end) for _, first, end in plan])
    assert owned.tolist() == list(range(1, n))
    for w, (start, first, end) in enumerate(plan):
        assert 0 <= start and end - start <= T and end <= n
        if w:  # Context of the first position a later window owns.
            assert first - start >= T - stride


def test_surprise_is_minus_log2_softmax_and_windows_match_single_windows():
    cfg, params = random_model()
    tok = CharTokenizer(CHARS)
    seq = np.concatenate([tok.encode("\n"), tok.encode(TEXT)])
    # A text that fits: one forward pass over newline + text.
    short = scoring.score_text(params, cfg, tok, TEXT[:15])
    np.testing.assert_allclose(short.token_bits, reference_bits(cfg, params, seq[:16]), atol=1e-5)
    # A longer one: each token's bits are those of a single window over its
    # owning window's tokens, and it had at least half a window of context.
    long = scoring.score_text(params, cfg, tok, TEXT, batch_size=4)  # Several batches.
    T = cfg.block_size
    for start, first, end in scoring.window_plan(len(seq), T, T // 2):
        ref = reference_bits(cfg, params, seq[start:start + T])
        np.testing.assert_allclose(long.token_bits[first - 1:end - 1],
                                   ref[first - start - 1:end - start - 1], atol=1e-5)
        assert start == 0 or first - start >= T // 2
    assert not np.isnan(long.token_bits).any()
    # The first 15 tokens fit in the first window: the same bits either way.
    np.testing.assert_allclose(long.token_bits[:15], short.token_bits, atol=1e-5)


def test_aggregates_add_up_with_multibyte_characters():
    c = model_config(tiny_config().model, 256)
    params = GPT(c).init(jax.random.key(1), jnp.zeros((1, 16), jnp.int32))["params"]
    # 2- and 3-byte characters, an empty line, a form feed and a \r (not line ends).
    text = "héllo wörld\nnaïve ☃ line\n\n\x0cend\r"
    s = scoring.score_text(params, c, ByteTokenizer(), text)
    assert len(s.token_ids) == len(text.encode()) and len(s.char_bits) == len(text)
    np.testing.assert_allclose(np.nansum(s.char_bits), np.nansum(s.token_bits), rtol=1e-5)
    rows = scoring.lines(s)
    assert [r["text"] for r in rows] == ["héllo wörld", "naïve ☃ line", "", "\x0cend"]
    assert sum(r["tokens"] for r in rows) == len(s.token_ids)
    for r in rows:
        assert r["bits_per_char"] == pytest.approx(r["bits"] / r["chars"])
        assert r["max_bits"] <= r["bits"] + 1e-6
    total = scoring.file_summary(s)
    assert total["bits"] == pytest.approx(sum(r["bits"] for r in rows), rel=1e-5)
    assert total["perplexity"] == pytest.approx(2 ** np.mean(s.token_bits), rel=1e-5)


def test_tokens_map_to_their_characters_for_every_tokenizer():
    from smallgpt_jax.tokenizers import bpe, words
    corpus = "the cat sat on the mat; the dog sat on the log.\n" * 20
    text = "the cat sat on a log: déjà vu ☃\nthe end"
    for tok in (CharTokenizer("".join(sorted(set(text)))), ByteTokenizer(),
                bpe.BPETokenizer.train(corpus, 270), words.WordTokenizer.train(corpus, 12)):
        ids = tok.encode(text)
        starts = scoring.token_starts(tok, ids, text)
        assert len(starts) == len(ids) and starts[0] == 0 and (np.diff(starts) >= 0).all()
        # Tokens that start at the same character (bytes of one character)
        # decode, together, to the text up to the next start.
        firsts = np.flatnonzero(np.diff(starts, prepend=-1))
        ends = [*firsts[1:], len(ids)]
        stops = [*starts[firsts[1:]], len(text)]
        spans = [text[starts[i]:stop] for i, stop in zip(firsts, stops)]
        if tok.kind == "word":  # Words outside the vocabulary decode as <unk>.
            assert spans == words.PIECE.findall(text)
        else:
            assert spans == [tok.decode(ids[i:j]) for i, j in zip(firsts, ends)], tok.kind


def test_unknown_characters_are_an_error_or_skipped_and_reported():
    cfg, params = random_model()
    tok = CharTokenizer(CHARS)
    with pytest.raises(UserError, match=r"2 character\(s\) not in .*'x', 'z'.*--unknown=skip"):
        scoring.score_text(params, cfg, tok, "ROMEO: x abc z\n")
    s = scoring.score_text(params, cfg, tok, "ROMEO: x abc z\n", unknown="skip")
    assert s.unknown == ["x", "z"]
    assert s.char_unknown.nonzero()[0].tolist() == [7, 13]
    assert np.isnan(s.char_bits[[7, 13]]).all()
    assert not np.isnan(np.delete(s.char_bits, [7, 13])).any()
    # What the model read is the text without them.
    same = scoring.score_text(params, cfg, tok, "ROMEO:  abc \n")
    np.testing.assert_allclose(s.token_bits, same.token_bits, atol=1e-6)
    assert scoring.lines(s)[0]["unknown"] == 2
    with pytest.raises(UserError, match="empty"):
        scoring.score_text(params, cfg, tok, "")


@pytest.mark.parametrize("n,T,stride", [(0, 8, 4), (1, 8, 4), (5, 8, 4), (8, 8, 4), (9, 8, 4),
                                        (100, 8, 4), (100, 8, 1), (100, 8, 7), (61, 7, 3)])
def test_streamed_windows_are_the_plan_whatever_the_pieces(n, T, stride):
    from types import SimpleNamespace
    seq = np.arange(n, dtype=np.int32) + 100
    cuts = np.sort(np.random.default_rng(n).integers(0, n + 1, size=12))
    pieces = np.split(seq, cuts)  # Empty pieces among them.
    echo = lambda cfg, params, batch_BT: batch_BT  # The "model" returns its input.
    out = list(windows.stream_windows(echo, None, SimpleNamespace(block_size=T), pieces,
                                      stride, batch_size=4))
    plan = windows.window_plan(n, T, stride) if n else []
    assert [w[:3] for w in out] == plan
    for start, first, end, tokens_T in out:
        assert tokens_T.tolist() == seq[start:start + T].tolist() + [0] * (start + T - n)


def test_a_file_read_in_many_pieces_gives_the_numbers_of_the_whole_text(tmp_path,
                                                                         monkeypatch):
    from smallgpt_jax.analysis import score_file
    cfg, params = random_model()
    tok = CharTokenizer(CHARS)
    # Unknown characters (skipped), an empty line, a last line without newline.
    text = ("ROMEO: abc dab x cab\nMORE: bad a cab dab\n\nzz E cab\n" * 8) + "MORE: ab"
    path = tmp_path / "in.txt"
    path.write_text(text)
    whole = scoring.score_text(params, cfg, tok, text, unknown="skip", batch_size=4)
    expected = {"token": score_file.token_rows(whole, tok), "line": scoring.lines(whole),
                "file": [dict(file=str(path), **scoring.file_summary(whole))]}
    monkeypatch.setattr(score_file, "READ_BYTES", 7)
    monkeypatch.setattr(score_file, "PIECE_CHARS", 5)  # Lines and windows cross pieces.
    found = score_file.survey(str(path))
    unknown = scoring.unknown_characters(tok, found.distinct)
    assert unknown == ["x", "z"] and found.chars == len(text)
    for per in ("token", "line", "file"):
        rows, got, pulled = score_file.Rows(per, tok), [], []
        texts = score_file.pieces(str(path), found.size)
        counted = (pulled.append(t) or t for t in texts)
        for scores in scoring.score_pieces(params, cfg, tok, counted, unknown, batch_size=4):
            if not got and per == "line":  # The first piece is done long before the end.
                assert len(pulled) < 10
            got += rows.add(scores)
        got += rows.finish(file=str(path))
        assert len(pulled) > 40
        assert len(got) == len(expected[per])
        for a, b in zip(got, expected[per]):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == (pytest.approx(b[k], rel=1e-12, nan_ok=True)
                                if isinstance(b[k], float) else b[k]), (per, k)
        if per == "line":
            top = score_file.Top(4, "bits_per_char")
            for row in got:
                top.add(row)
            ranked = sorted(expected["line"], key=lambda r: -r["bits_per_char"])
            assert [r["line_number"] for r in top.rows()] == [r["line_number"] for r in ranked[:4]]
            assert top.count == len(ranked)


def test_pieces_are_cut_where_every_tokenizer_splits(tmp_path, monkeypatch):
    from smallgpt_jax.analysis import score_file
    from smallgpt_jax.tokenizers import bpe, words
    corpus = "the cat sat on the mat; the dog sat on the log.\n  déjà vu ☃\n\n" * 20
    path = tmp_path / "in.txt"
    path.write_text(corpus, encoding="utf-8")
    monkeypatch.setattr(score_file, "READ_BYTES", 7)  # Multi-byte characters cut by reads.
    monkeypatch.setattr(score_file, "PIECE_CHARS", 16)
    pieces = list(score_file.pieces(str(path), path.stat().st_size))
    assert len(pieces) > 50 and "".join(pieces) == corpus
    for tok in (bpe.BPETokenizer.train(corpus, 270), words.WordTokenizer.train(corpus, 12)):
        assert np.concatenate([tok.encode(p) for p in pieces]).tolist() == \
            tok.encode(corpus).tolist(), tok.kind


def test_the_streamed_page_is_the_whole_texts_and_its_scale_numpys(tmp_path, monkeypatch):
    from smallgpt_jax.analysis import score_file
    cfg, params = random_model()
    tok = CharTokenizer(CHARS)
    text = "x ROMEO: <abc> & dab\n" * 20  # Starts with an unknown character; HTML's own.
    path = tmp_path / "in.txt"
    path.write_text(text)
    pages = []
    for piece_chars in (1 << 16, 3):
        monkeypatch.setattr(score_file, "PIECE_CHARS", piece_chars)
        page = score_file.Page(str(tmp_path))
        texts = score_file.pieces(str(path), len(text))
        for scores in scoring.score_pieces(params, cfg, tok, texts, ["x", "<", ">", "&"]):
            page.add(scores)
        monkeypatch.setattr(score_file, "READ_BYTES", 5)  # Markers cut by the reads.
        page.write(str(tmp_path / f"{piece_chars}.html"), "title")
        page.close()
        pages.append((tmp_path / f"{piece_chars}.html").read_text(encoding="utf-8"))
    assert pages[0] == pages[1] and "\0" not in pages[0]
    assert pages[0].count('class="u"') == 80 and pages[0].count("<span") == len(text)
    assert "&lt;abc&gt; &amp;" not in pages[0] and "&lt;" in pages[0]
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 99, 100, 101, 1234):
        values = np.round(rng.exponential(3.0, size=k), 1)  # Ties too.
        page = score_file.Page(str(tmp_path))
        page.bits.write(values.tobytes())
        page.scored = k
        assert page._percentile_99() == np.percentile(values, 99), k
        page.close()


def test_hidden_state_shapes_and_windows():
    cfg, params = random_model()
    tok = CharTokenizer(CHARS)
    L, D = cfg.num_layers, cfg.embed_dim
    states = representations.hidden_states(params, cfg, tok, TEXT)
    assert states.shape == (L + 1, len(TEXT), D)
    # Tokens of the first window get the same states as the text cut to fit it
    # (up to float32 rounding: one window is a batch of 1, the long text of 16).
    np.testing.assert_allclose(representations.hidden_states(params, cfg, tok, TEXT[:15]),
                               states[:, :15], atol=1e-5, rtol=1e-5)
    lines = representations.line_states(params, cfg, tok, TEXT, layers=[-1, 0])
    assert lines.shape == (2, 6, D)
    np.testing.assert_allclose(lines[0, 1], states[L, 19:39].mean(0), atol=1e-5)
    doc = representations.document_state(params, cfg, tok, TEXT, layers=[1])
    np.testing.assert_allclose(doc, states[1:2].mean(1), atol=1e-5)
    with pytest.raises(UserError, match="layer 5 does not exist"):
        representations.hidden_states(params, cfg, tok, TEXT, layers=[5])


def test_last_hidden_state_gives_the_logits_also_with_scanned_layers():
    from smallgpt_jax.normalization import Norm
    for scan in (False, True):
        cfg, params = random_model({"model.scan_layers": scan})
        tok = CharTokenizer(CHARS)
        last_ND = representations.hidden_states(params, cfg, tok, TEXT[:15], layers=[-1])[0]
        x_ND = Norm(cfg.norm, cfg.use_bias).apply({"params": params["norm_f"]}, last_ND)
        logits_NV = x_ND @ params["token_embed"]["embedding"].T  # The tied output head.
        seq = np.concatenate([tok.encode("\n"), tok.encode(TEXT[:15])])
        expected = GPT(cfg).apply({"params": params}, jnp.asarray(seq)[None])[0, 1:]
        np.testing.assert_allclose(logits_NV, expected, atol=1e-4)


# ------------------------------------------------- a model of normal logs

def _make_logs():
    return load_file("experiments/make_logs.py", "make_logs")


@pytest.fixture(scope="module")
def log_run(tmp_path_factory):
    """A tiny byte model trained on 4,000 generated normal log lines (~10 CPU s)."""
    from smallgpt_jax.training import loop
    root = tmp_path_factory.mktemp("logs")
    _make_logs().generate(str(root), train_lines=4000, test_lines=400, anomalies=4, seed=1)
    c = tiny_config(**{"data.path": str(root / "train.log"), "data.tokenizer": "byte",
                       "model.block_size": 64, "train.num_steps": 200, "train.eval_every": 200,
                       "train.checkpoint_every": 200, "train.sample_tokens": 0,
                       "train.learning_rate": 1e-2, "train.warmup_steps": 10})
    loop.train_and_evaluate(c, str(root / "run"))
    return root


def test_injected_log_anomalies_score_above_the_median_normal_line(log_run):
    out = log_run / "lines.csv"
    page = log_run / "surprise.html"
    proc = run_cli([f"--workdir={log_run / 'run'}", f"--input={log_run / 'test.log'}",
                    f"--output={out}", f"--html={page}"], module="smallgpt_jax.score")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["line_number", "bits_per_char", "perplexity", "tokens", "chars",
                             "bits", "unknown", "max_bits", "max_token", "text"]
    with open(log_run / "test_labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    assert len(rows) == len(labels) == 400
    score = np.array([float(r["max_bits"]) for r in rows])  # The most surprising token.
    kinds = np.array([r["kind"] for r in labels])
    median_normal = np.median(score[kinds == "normal"])
    # Every line of these kinds beats the median normal line. Not out_of_order:
    # a 'done' line before its 'start' is unusual only to a model that has
    # learned to match request ids across lines, which 200 steps of this
    # tiny model have not (the walk-through's model has: docs page 14).
    for kind in ("unknown_service", "malformed", "error_burst"):
        assert (score[kinds == kind] > median_normal).all(), kind
    html = page.read_text(encoding="utf-8")
    assert html.count("<span") >= sum(len(r["text"]) for r in rows)


def test_per_token_csv_and_table(log_run, tmp_path):
    from smallgpt_jax.analysis.score_file import token_rows
    from smallgpt_jax.cli.score import TOKEN_COLUMNS, write_csv
    cfg, params = random_model()
    tok = CharTokenizer(CHARS)
    s = scoring.score_text(params, cfg, tok, "ROMEO: x abc\n", unknown="skip")
    write_csv(str(tmp_path / "tokens.csv"), TOKEN_COLUMNS, token_rows(s, tok))
    with open(tmp_path / "tokens.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["position", "line_number", "char_offset", "token", "bits",
                             "predicted", "unknown"]
    assert "".join(r["token"] for r in rows) == "ROMEO: x abc\n"  # The unknown 'x' too.
    assert [r["unknown"] for r in rows].count("1") == 1 and rows[7]["bits"] == ""
    assert all(float(r["bits"]) >= 0 for r in rows if r["unknown"] == "0")
    # Without --output: a table of the --top most surprising rows.
    (tmp_path / "two.log").write_text("2026-03-14T00:00:01.000Z web-01 nginx[1]: INFO\nshort\n")
    proc = run_cli([f"--workdir={log_run / 'run'}", f"--input={tmp_path / 'two.log'}",
                    "--per=token", "--top=3"], module="smallgpt_jax.score")
    assert proc.returncode == 0 and "most surprising tokens" in proc.stdout, proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) == 5  # Title, header, three rows.


def test_bad_input_is_one_line(tmp_path):
    from smallgpt_jax.analysis.score_file import survey as read_text
    from smallgpt_jax.checkpoint.reader import load_params
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.bin").write_bytes(b"\x7fELF\x02\x01\x00\x00abc")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match="is empty"):
        read_text(str(tmp_path / "empty.txt"))
    with pytest.raises(UserError, match="looks binary"):
        read_text(str(tmp_path / "binary.bin"))
    with pytest.raises(UserError, match="not UTF-8 text"):
        read_text(str(tmp_path / "latin1.txt"))
    with pytest.raises(UserError, match="no checkpoints in"):
        load_params(str(tmp_path))
    # Through the command: one line, before the checkpoint is loaded.
    proc = run_cli([f"--workdir={tmp_path}", f"--input={tmp_path / 'binary.bin'}"],
                   module="smallgpt_jax.score")
    assert_one_clear_line(proc, "looks binary")
    (tmp_path / "text.txt").write_text("some text\n")
    proc = run_cli([f"--workdir={tmp_path}", f"--input={tmp_path / 'text.txt'}",
                    f"--html={tmp_path / 'no' / 'page.html'}"], module="smallgpt_jax.score")
    assert_one_clear_line(proc, f"--html={tmp_path / 'no' / 'page.html'}: folder")
    # Results written over the text they are of would lose it.
    proc = run_cli([f"--workdir={tmp_path}", f"--input={tmp_path / 'text.txt'}",
                    f"--output={tmp_path / 'text.txt'}"], module="smallgpt_jax.score")
    assert_one_clear_line(proc, "is the --input file")
    assert (tmp_path / "text.txt").read_text() == "some text\n"


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A workdir with a real checkpoint of the random model (no training)."""
    from smallgpt_jax.checkpoint import writer as checkpoint
    from smallgpt_jax.checkpoint.meta import Meta
    _, params = random_model()
    workdir, config = str(tmp_path_factory.mktemp("char_run")), tiny_config()
    with checkpoint.Checkpointer(workdir, 1) as ckpt:
        ckpt.save(1, {"params": params}, Meta(step=1, seed=config.seed, config=config.to_dict(),
                                              tokenizer=CharTokenizer(CHARS).to_dict()))
    save_tokenizer(CharTokenizer(CHARS), os.path.join(workdir, "tokenizer.json"))
    return workdir


def test_the_checkpoint_tokenizer_is_used_not_the_workdir_copy(char_run, tmp_path):
    """The workdir's tokenizer.json is only a copy: an edited one (here
    without 'R') neither refuses text the model reads nor changes a number."""
    workdir = tmp_path / "run"
    shutil.copytree(char_run, workdir)
    save_tokenizer(CharTokenizer(CHARS.replace("R", "")), str(workdir / "tokenizer.json"))
    (tmp_path / "in.txt").write_text(TEXT)
    proc = run_cli([f"--workdir={workdir}", f"--input={tmp_path / 'in.txt'}", "--per=file",
                    f"--output={tmp_path / 'file.csv'}"], module="smallgpt_jax.score")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "file.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    cfg, params = random_model()
    expected = scoring.file_summary(scoring.score_text(params, cfg, CharTokenizer(CHARS), TEXT))
    assert float(row["bits"]) == pytest.approx(expected["bits"], abs=1e-4)
    # A character the model's vocabulary lacks is still one clear line.
    (tmp_path / "snow.txt").write_text("ROMEO ☃ abc\n")
    proc = run_cli([f"--workdir={workdir}", f"--input={tmp_path / 'snow.txt'}"],
                   module="smallgpt_jax.score")
    assert_one_clear_line(proc, "1 character(s) not in the model's vocabulary: '☃'")
