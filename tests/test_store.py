"""The token store: exactly today's tokens, the cache, change detection, faults."""

import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import ROOT, needs_shakespeare, run_cli, tiny_config
# loop: imported here, not in a test that captures stderr (its progress bar
# binds sys.stderr when training/reporting.py is first imported).
from smallgpt_jax import data
from smallgpt_jax.checkpoint import writer as checkpoint
from smallgpt_jax.store import corpus, corpus_paths, passes, store, manifest as store_manifest
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers import bpe, tokenizer as tok_lib
from smallgpt_jax.training import loop

WORDS = ["the", "king", "queen", "shall", "speak", "of", "love", "and", "war", "naïve",
         "café", "日本語", "🙂", "to", "be", "or", "not", "is", "it", "Ünïcødé"]


def make_corpus(folder, n_files=3, words_per_file=6000, seed=0):
    """Files of pseudo-text with multi-byte characters, odd spacing and punctuation."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n_files):
        parts = []
        for _ in range(words_per_file):
            parts.append(WORDS[rng.integers(len(WORDS))])
            parts.append(str(rng.choice([" ", " ", " ", ", ", ".\n", "  ", "\n\n", "; ", "'s "])))
        with open(os.path.join(folder, f"doc{i}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(parts))
    return str(folder)


def in_memory(config):
    """The data path before the store (loop.prepare_data as it was): the whole
    text joined and split in memory, the tokenizer built on the training text."""
    d = config.data
    paths = corpus_paths.resolve_paths(d.path) if d.path else [data.find_dataset(d.dataset)]
    separator = bpe.END_OF_TEXT if d.end_of_text else "\n\n"
    text = separator.join(data.read_text(p) for p in paths)
    train_text, val_text = data.split_text(text, d.train_fraction)
    specials = (bpe.END_OF_TEXT,) if d.end_of_text else ()
    tok = tok_lib.build(d.tokenizer, train_text, d.vocab_size, specials)
    val_chars = len(val_text) - (len(bpe.END_OF_TEXT) - 1) * (
        val_text.count(bpe.END_OF_TEXT) if d.end_of_text else 0)
    val = tok.encode(val_text)
    return tok, tok.encode(train_text), val, len(val) / val_chars


@pytest.fixture
def small_pieces(monkeypatch):
    """Tiny reads and pieces, so every boundary case (a character cut by a read,
    a piece cut inside the text) happens many times in a small corpus."""
    monkeypatch.setattr(corpus, "READ_BYTES", 997)
    monkeypatch.setattr(passes, "ENCODE_PIECE", 300)
    monkeypatch.setattr(passes, "FIT_PIECE", 500)


@pytest.mark.parametrize("kind,extra", [
    ("char", {}), ("byte", {}), ("byte", {"data.end_of_text": True, "data.train_fraction": 0.5}),
    ("bpe", {"data.vocab_size": 300}),
    ("bpe", {"data.vocab_size": 300, "data.end_of_text": True}),
    ("word", {"data.vocab_size": 15})])
def test_store_gives_exactly_the_in_memory_tokens(tmp_path, small_pieces, kind, extra):
    path = make_corpus(tmp_path / "corpus")
    config = tiny_config(**{"data.path": path, "data.tokenizer": kind,
                            "data.cache_dir": str(tmp_path / "stores"), **extra})
    tok, train_ids, val_ids, tokens_per_char = in_memory(config)
    s = store.open_store(config.data, verbose=False)
    assert s.tokenizer.to_dict() == tok.to_dict()
    splits = s.splits()
    assert isinstance(splits.train, np.memmap)
    assert splits.train.dtype == passes.token_dtype(tok.vocab_size)
    np.testing.assert_array_equal(splits.train, train_ids)
    np.testing.assert_array_equal(splits.val, val_ids)
    assert s.tokens_per_char == pytest.approx(tokens_per_char, rel=1e-12)
    for step in range(3):  # The same batches, of the same type.
        a = data.sample_batch(splits.train, 0, step, 8, 16)
        np.testing.assert_array_equal(a, data.sample_batch(train_ids, 0, step, 8, 16))
        assert a.dtype == np.int32


@needs_shakespeare
def test_tiny_shakespeare_run_data_is_unchanged(tmp_path):
    """What loop.train_and_evaluate trains on: today's tokens, batches, bpc."""
    config = tiny_config()
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    tok, train_ids, val_ids, tokens_per_char = in_memory(config)
    tok2, splits, source, tpc = store.load_splits(config.data, config.model.block_size,
                                                  workdir)
    assert tok2.to_dict() == tok.to_dict() and tok.vocab_size == 65
    np.testing.assert_array_equal(splits.train, train_ids)
    np.testing.assert_array_equal(splits.val, val_ids)
    assert tpc == tokens_per_char == 1.0
    assert source.endswith(os.path.join("tinyshakespeare", "input.txt"))
    assert tok_lib.load(os.path.join(workdir, "tokenizer.json")).to_dict() == tok.to_dict()


def test_char_alphabet_covers_characters_only_in_validation(tmp_path):
    (tmp_path / "a.txt").write_text("abc " * 200 + "xyz", encoding="utf-8")
    config = tiny_config(**{"data.path": str(tmp_path / "a.txt"),
                            "data.cache_dir": str(tmp_path / "stores")})
    s = store.open_store(config.data, verbose=False)
    assert s.tokenizer.chars == " abcxyz"
    assert s.tokenizer.decode(s.splits().val).endswith("xyz")


def test_cache_hit_change_detection_and_format(tmp_path, capfd):
    path = tmp_path / "a.txt"
    path.write_text("to be or not to be " * 300, encoding="utf-8")
    config = tiny_config(**{"data.path": str(path), "data.cache_dir": str(tmp_path / "stores")})
    first = store.open_store(config.data)
    assert "preparing the token store" in capfd.readouterr().err
    stamp = os.stat(os.path.join(first.directory, "train.bin")).st_mtime_ns
    again = store.open_store(config.data)  # A hit: nothing prepared, nothing said.
    assert again.directory == first.directory and capfd.readouterr().err == ""
    assert os.stat(os.path.join(first.directory, "train.bin")).st_mtime_ns == stamp

    with open(path, "a", encoding="utf-8") as f:
        f.write("that is the question")
    changed = store.open_store(config.data)
    assert "again: " in (err := capfd.readouterr().err) and "changed size" in err
    assert changed.tokenizer.decode(changed.splits().val).endswith("question")
    os.utime(path, ns=(stamp, stamp))  # Same size, other time: prepared again.
    store.open_store(config.data)
    assert "was modified" in capfd.readouterr().err

    manifest = os.path.join(first.directory, "manifest.json")
    text = open(manifest).read()
    open(manifest, "w").write(text.replace(f'"format": {store_manifest.FORMAT}', '"format": 99'))
    store.open_store(config.data)
    assert "store format 99" in capfd.readouterr().err
    with open(os.path.join(first.directory, "val.bin"), "ab") as f:
        f.write(b"\0")
    store.open_store(config.data)
    assert "val.bin is missing or has the wrong size" in capfd.readouterr().err
    # Other settings are another store; the first one stays.
    other = store.open_store(tiny_config(**{**_flat(config), "data.tokenizer": "byte"}).data)
    assert other.directory != first.directory and os.path.isdir(first.directory)


def _flat(config):
    return {f"data.{k}": v for k, v in config.data.items()}


def test_full_disk_and_bad_bytes_leave_no_store(tmp_path, small_pieces, monkeypatch):
    folder = make_corpus(tmp_path / "corpus", n_files=1)
    config = tiny_config(**{"data.path": folder, "data.cache_dir": str(tmp_path / "stores")})
    real_write = passes._sync

    def disk_full(f):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(passes, "_sync", disk_full)
    with pytest.raises(UserError, match="cannot write the token store.*No space left"):
        store.open_store(config.data, verbose=False)
    assert [e for e in os.listdir(tmp_path / "stores") if not e.endswith(".lock")] == []
    monkeypatch.setattr(passes, "_sync", real_write)

    raw = open(os.path.join(folder, "doc0.txt"), "rb").read()
    offset = len(raw) - 1234
    with open(os.path.join(folder, "doc0.txt"), "wb") as f:  # One Latin-1 byte, deep inside.
        f.write(raw[:offset] + b"\xe9" + raw[offset:])
    with pytest.raises(UserError, match=rf"doc0.txt is not valid UTF-8: byte 0xe9 at offset "
                                        rf"{offset}\."):
        store.open_store(config.data, verbose=False)
    assert [e for e in os.listdir(tmp_path / "stores") if not e.endswith(".lock")] == []


KILLED_PREPARATION = """
import os, sys, time
from smallgpt_jax.store import corpus, store
from conftest import tiny_config
corpus.READ_BYTES = 4096
real_add = corpus.Progress.add
def add(self, nbytes=0, ntokens=0):
    real_add(self, nbytes, ntokens)
    if ntokens:  # Encoding has started: files are half written.
        print("writing", flush=True)
        time.sleep(60)
corpus.Progress.add = add
store.open_store(tiny_config(**{"data.path": sys.argv[1], "data.cache_dir": sys.argv[2]}).data)
"""


def test_killed_preparation_is_never_used_and_starts_over(tmp_path, capfd):
    folder = make_corpus(tmp_path / "corpus", n_files=1)
    stores = str(tmp_path / "stores")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests"))
    victim = subprocess.Popen([sys.executable, "-c", KILLED_PREPARATION, folder, stores],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    assert victim.stdout.readline().strip() == "writing"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    left = os.listdir(stores)
    assert any(".tmp-" in e for e in left)  # The half-written store...
    assert not any(e.startswith("corpus-char-") and ".tmp-" not in e and not e.endswith(".lock")
                   for e in left)  # ...was never published.
    config = tiny_config(**{"data.path": folder, "data.cache_dir": stores})
    s = store.open_store(config.data)
    assert "cut off earlier" in capfd.readouterr().err
    assert not any(".tmp-" in e for e in os.listdir(stores))
    np.testing.assert_array_equal(s.splits().train, in_memory(config)[1])


def test_two_preparations_at_once_one_waits_and_reuses(tmp_path, capfd, monkeypatch):
    from smallgpt_jax.system import console
    folder = make_corpus(tmp_path / "corpus", n_files=2)
    config = tiny_config(**{"data.path": folder, "data.cache_dir": str(tmp_path / "stores"),
                            "data.tokenizer": "word", "data.vocab_size": 12})
    results, errors = [], []
    # The lock's holder prepares only once the other thread waits for it: on
    # a loaded machine the first could otherwise finish before the second
    # starts, which then finds the store ready and never waits.
    other_waits, say, prepare_now, holders = threading.Event(), console.say, \
        store._open_or_prepare, []

    def say_and_note(text, *args, **kwargs):
        if "waiting for another process" in text:
            other_waits.set()
        say(text, *args, **kwargs)

    def prepare_once_the_other_waits(*args, **kwargs):
        if not holders:
            holders.append(threading.current_thread())
            other_waits.wait(60)
        return prepare_now(*args, **kwargs)
    monkeypatch.setattr(console, "say", say_and_note)
    monkeypatch.setattr(store, "_open_or_prepare", prepare_once_the_other_waits)

    def prepare():
        try:
            results.append(store.open_store(config.data))
        except Exception as e:  # Reported below.
            errors.append(e)
    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    err = capfd.readouterr().err
    assert err.count("preparing the token store") == 1 and "waiting for another process" in err
    a, b = (r.splits() for r in results)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.train, in_memory(config)[1])


def test_large_vocabulary_gets_32_bit_ids(tmp_path):
    words = [f"w{i}" for i in range(70_000)]
    (tmp_path / "a.txt").write_text(" ".join(words * 2), encoding="utf-8")
    config = tiny_config(**{"data.path": str(tmp_path / "a.txt"), "data.tokenizer": "word",
                            "data.vocab_size": 66_000, "data.cache_dir": str(tmp_path / "s")})
    s = store.open_store(config.data, verbose=False)
    splits = s.splits()
    assert s.manifest["dtype"] == "uint32" and splits.train.dtype == np.uint32
    assert int(splits.train.max()) > 65535  # Ids past 16 bits survive, not wrapped.
    assert passes.token_dtype(256) == np.uint8 and passes.token_dtype(65536) == np.uint16


def test_corpus_too_small_and_fifo(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 40)
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    config = tiny_config(**{"data.path": str(tmp_path / "a.txt"),
                            "data.cache_dir": str(tmp_path / "s")})
    with pytest.raises(UserError, match="validation split has 4 tokens, fewer than "
                                        "block_size\\+1=17"):
        store.load_splits(config.data, config.model.block_size, workdir)
    os.mkfifo(tmp_path / "pipe.txt")  # Would block for ever if opened.
    assert corpus_paths.resolve_paths(str(tmp_path)) == [str(tmp_path / "a.txt")]
    with pytest.raises(UserError, match="not a regular file"):
        corpus_paths.resolve_paths(str(tmp_path / "pipe.txt"))


def test_prepare_command_prepares_once(tmp_path):
    (tmp_path / "a.txt").write_text("to be or not to be, that is the question\n" * 200)
    args = ["--config=configs/char_cpu.py", f"--config.data.path={tmp_path / 'a.txt'}",
            f"--config.data.cache_dir={tmp_path / 'stores'}"]
    first = run_cli(args, module="smallgpt_jax.prepare", timeout=120)
    assert first.returncode == 0, first.stderr
    assert "preparing (2/2: encoding)" in first.stderr and "MB/s" in first.stderr
    assert "7,380 train / 820 val tokens (uint8), char vocabulary" in first.stdout
    second = run_cli(args, module="smallgpt_jax.prepare", timeout=120)
    assert second.returncode == 0 and "preparing" not in second.stderr
    assert second.stdout == first.stdout
    folder = first.stdout.split(":")[0]
    _poke(os.path.join(folder, "val.bin"), 5, 0)
    verified = run_cli(args + ["--verify"], module="smallgpt_jax.prepare", timeout=120)
    assert verified.returncode == 0, verified.stderr
    assert "again: its val.bin is damaged" in verified.stderr
    assert verified.stdout.startswith("verified: every block") and first.stdout in verified.stdout
    bad = run_cli(args[:1] + [f"--config.data.path={tmp_path / 'nope.txt'}"],
                  module="smallgpt_jax.prepare", timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no such file")


def test_resume_on_other_data_is_refused_unless_allowed(tmp_path, capfd, monkeypatch):
    import json
    alphabet = [chr(c) for c in range(48, 48 + 65)]  # 65 characters: Tiny Shakespeare's
    rng = np.random.default_rng(0)  # shapes, so compiled programs are shared with other tests.
    path = tmp_path / "a.txt"
    path.write_text("".join(rng.choice(alphabet, 4000)))
    workdir = str(tmp_path / "run")
    config = tiny_config(**{"data.path": str(path), "data.cache_dir": str(tmp_path / "s"),
                            "train.num_steps": 4, "train.eval_every": 4,
                            "train.checkpoint_every": 4})
    loop.train_and_evaluate(config, workdir)
    path.write_text("".join(rng.choice(alphabet, 4000)))  # Other text, same size and alphabet.
    config.train.num_steps = 8
    with pytest.raises(UserError, match="cannot resume: the corpus or its train/validation "
                                        "split differs.*allow_data_change=True"):
        loop.train_and_evaluate(config, workdir)
    capfd.readouterr()
    # Were the old best loss carried over, this one would stay the best.
    monkeypatch.setattr(checkpoint.Resume, "best_val_loss", property(lambda self: 1e-6))
    config.train.allow_data_change = True
    final = loop.train_and_evaluate(config, workdir).metrics
    assert "resuming on different data" in capfd.readouterr().err
    assert final["eval/best_val_loss"] == final["eval/val_loss"] > 1.0  # It restarted.
    with open(os.path.join(workdir, "checkpoints", "8", "meta", "metadata")) as f:
        meta = json.load(f)
    fingerprint = store.open_store(config.data, verbose=False).manifest["fingerprint"]
    assert meta["data_fingerprint"] == fingerprint != ""


def test_a_resumed_runs_own_tokenizer_and_a_stop_signal(tmp_path):
    from smallgpt_jax.system.errors import Interrupted
    (tmp_path / "a.txt").write_text("abc " * 300)
    config = tiny_config(**{"data.path": str(tmp_path / "a.txt"),
                            "data.cache_dir": str(tmp_path / "s")})
    own = tok_lib.CharTokenizer(" abcz")  # e.g. saved by an older run: another alphabet.
    s = store.open_store(config.data, own, verbose=False)
    assert s.tokenizer.to_dict() == own.to_dict()
    tok, _, val_ids, _ = in_memory(config)
    np.testing.assert_array_equal(s.splits().val, own.encode(tok.decode(val_ids)))
    usual = store.open_store(config.data, verbose=False)
    assert usual.directory != s.directory and usual.tokenizer.chars == " abc"
    assert store.open_store(config.data, usual.tokenizer, verbose=False).directory == \
        usual.directory  # Same vocabulary: the usual store serves the resumed run.

    class Stop:
        signum = signal.SIGTERM
    (tmp_path / "a.txt").write_text("abcd " * 300)
    with pytest.raises(Interrupted, match="stopped while preparing the corpus"):
        store.open_store(config.data, verbose=False, stop=Stop())
    assert store.why_stale(usual.directory, [corpus.Source.of(str(tmp_path / "a.txt"))])
    assert not any(".tmp-" in e for e in os.listdir(tmp_path / "s"))


def test_vocabulary_sample_is_even_and_deterministic(tmp_path, small_pieces):
    pieces = [f"{i:04d}" * 25 for i in range(100)]  # 100 pieces of 100 characters.
    kept = list(corpus.even_sample(iter(pieces), 10_000, 2_500))
    assert len(kept) == 25 and kept == list(corpus.even_sample(iter(pieces), 10_000, 2_500))
    positions = [pieces.index(k) for k in kept]
    assert max(np.diff(positions)) == min(np.diff(positions)) == 4  # Spread over all of it.
    assert list(corpus.even_sample(iter(pieces), 10_000, 0)) == pieces
    # A BPE vocabulary learnt from a sample: a valid store, other than the full one's.
    folder = make_corpus(tmp_path / "corpus", n_files=1)
    settings = {"data.path": folder, "data.cache_dir": str(tmp_path / "s"),
                "data.tokenizer": "bpe", "data.vocab_size": 280}
    full = store.open_store(tiny_config(**settings).data, verbose=False)
    sampled = store.open_store(tiny_config(**settings, **{"data.fit_max_chars": 5000}).data,
                               verbose=False)
    assert sampled.directory != full.directory and sampled.tokenizer.vocab_size == 280
    assert sampled.tokenizer.to_dict() != full.tokenizer.to_dict()
    text = open(os.path.join(folder, "doc0.txt"), encoding="utf-8").read()
    assert sampled.tokenizer.decode(sampled.splits().train) == text[:int(len(text) * 0.9)]


def _poke(path, offset, value: int) -> None:
    """Overwrites one byte in place (the same file, the same size)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([value]))


def test_a_damaged_store_is_found_and_prepared_again(tmp_path, capfd):
    (tmp_path / "a.txt").write_text("to be or not to be " * 300, encoding="utf-8")
    config = tiny_config(**{"data.path": str(tmp_path / "a.txt"),
                            "data.cache_dir": str(tmp_path / "s")})
    first = store.open_store(config.data, verbose=False)
    want = np.array(first.splits().train)
    train, manifest = (os.path.join(first.directory, f) for f in ("train.bin", "manifest.json"))
    _poke(train, 100, 3)  # Still an id of the vocabulary, the size unchanged.
    again = store.open_store(config.data)
    err = capfd.readouterr().err
    assert "again: its train.bin is damaged (block 1 of 1 differs" in err and "a cache" in err
    np.testing.assert_array_equal(again.splits().train, want)
    for edit in (lambda m: m.pop("val_tokens"), lambda m: m.update(val_tokens="12"),
                 lambda m: m["sources"][0].update(size=None)):  # Missing keys, wrong types.
        m = json.load(open(manifest))
        edit(m)
        json.dump(m, open(manifest, "w"))
        store.open_store(config.data)
        assert "again: its manifest is damaged (edited or cut" in capfd.readouterr().err
    open(os.path.join(first.directory, "tokenizer.json"), "w").write('{"kind": "char", "ch')
    s = store.open_store(config.data)
    assert "again: its tokenizer.json is damaged" in capfd.readouterr().err
    np.testing.assert_array_equal(s.splits().train, want)
    os.remove(os.path.join(first.directory, "tokenizer.json"))
    os.mkdir(os.path.join(first.directory, "tokenizer.json"))  # Not even a file.
    s = store.open_store(config.data)
    assert "again: its tokenizer.json cannot be read (Is a directory): damaged" in \
        capfd.readouterr().err
    np.testing.assert_array_equal(s.splits().train, want)


def test_ids_past_the_vocabulary_are_refused_when_a_batch_is_drawn(tmp_path):
    (tmp_path / "a.txt").write_text("to be or not to be " * 300, encoding="utf-8")
    config = tiny_config(**{"data.path": str(tmp_path / "a.txt"),
                            "data.cache_dir": str(tmp_path / "s")})
    s = store.open_store(config.data, verbose=False)
    tokens = s.splits().train
    batch = data.sample_batch(tokens, 0, 0, 64, 16)
    assert batch.max() < s.tokenizer.vocab_size
    # Damaged after the open's check (or in a block it did not sample): NaN
    # losses, "training diverged", an IndexError when decoded, were it used.
    _poke(os.path.join(s.directory, "train.bin"), len(tokens) // 2, 200)
    with pytest.raises(UserError, match=rf"the token store {s.directory} is damaged: train.bin "
                                        rf"holds id 200, past its vocabulary of 7; .*delete"):
        for step in range(200):
            data.sample_batch(tokens, 0, step, 64, 16)
    os.truncate(os.path.join(s.directory, "train.bin"), 100)  # Cut while a run reads it.
    with pytest.raises(UserError, match="train.bin is shorter than when it was opened"):
        for step in range(200):
            data.sample_batch(tokens, 0, step, 64, 16)


def test_open_samples_blocks_and_verify_checks_them_all(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(store_manifest, "BLOCK", 64)  # 81 blocks: more than an open checks.
    monkeypatch.setattr(store_manifest.random, "sample", lambda pop, k: list(pop)[:k])
    (tmp_path / "a.txt").write_text("to be or not to be " * 300, encoding="utf-8")
    config = tiny_config(**{"data.path": str(tmp_path / "a.txt"),
                            "data.cache_dir": str(tmp_path / "s")})
    s = store.open_store(config.data, verbose=False)
    assert len(s.splits().train) == 5130  # 81 blocks of 64 bytes.
    _poke(os.path.join(s.directory, "train.bin"), 64 * 40 + 5, 3)  # Block 41, not sampled.
    assert store.open_store(config.data).directory == s.directory
    assert capfd.readouterr().err == ""  # Not seen: a quick check samples.
    store.open_store(config.data, verify=True)
    assert "again: its train.bin is damaged (block 41 of 81 differs" in capfd.readouterr().err
    _poke(os.path.join(s.directory, "train.bin"), 0, 3)  # The first block: every open sees it.
    store.open_store(config.data)
    assert "again: its train.bin is damaged (block 1 of 81" in capfd.readouterr().err


def test_a_read_only_store_is_used_as_it_is(tmp_path, monkeypatch, capfd):
    (tmp_path / "a.txt").write_text("to be or not to be " * 300, encoding="utf-8")
    stores = str(tmp_path / "s")
    config = tiny_config(**{"data.path": str(tmp_path / "a.txt"), "data.cache_dir": stores})
    first = store.open_store(config.data, verbose=False)
    real_open, real_mkdir = os.open, os.mkdir

    def read_only(path, flags, *args, **kwargs):  # As a read-only mount answers.
        if str(path).startswith(stores) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(30, "Read-only file system", path)
        return real_open(path, flags, *args, **kwargs)

    def no_mkdir(path, *args, **kwargs):
        if str(path).startswith(stores):
            raise OSError(30, "Read-only file system", path)
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(os, "mkdir", no_mkdir)
    s = store.open_store(config.data)  # Its lock file held shared, read-only.
    np.testing.assert_array_equal(s.splits().train, first.splits().train)
    os.remove(first.directory + ".lock")  # No lock file, none can be made: none is held.
    assert store.open_store(config.data).directory == first.directory
    assert capfd.readouterr().err == ""
    with open(tmp_path / "a.txt", "a") as f:
        f.write("that is the question")
    with pytest.raises(UserError, match=r"the token store .* cannot be used \(.*changed size.*\) "
                                        r"nor prepared there \(this process cannot write .*"
                                        r"\.lock\); set --config.data.cache_dir"):
        store.open_store(config.data)
    # Its lock file read-only, its folder writable: a reader only, which must
    # not prepare (or clean up) beside a preparation that holds the lock.
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    open(first.directory + ".lock", "w").close()
    os.mkdir(first.directory + ".tmp-inflight")  # Another process's, being written.
    with pytest.raises(UserError, match=r"cannot be used .* nor prepared there \(this process"):
        store.open_store(config.data)
    assert os.path.isdir(first.directory + ".tmp-inflight")


def test_a_file_gone_since_it_was_listed_is_named(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("to be or not to be " * 300, encoding="utf-8")
    config = tiny_config(**{"data.path": str(tmp_path), "data.cache_dir": str(tmp_path / "s")})
    listed = corpus_paths.resolve_paths(str(tmp_path))
    monkeypatch.setattr(corpus_paths, "resolve_paths", lambda path: listed)
    os.remove(tmp_path / "a.txt")
    with pytest.raises(UserError, match=r"cannot read .*a.txt \(No such file or directory\)\.$"):
        store.open_store(config.data, verbose=False)


def test_a_character_appended_while_preparing_is_a_change(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("to be or not to be " * 300, encoding="utf-8")
    config = tiny_config(**{"data.path": str(path), "data.cache_dir": str(tmp_path / "s")})
    real_done = corpus.Progress.done

    def done(self):  # After the pass that collects the alphabet, a new character arrives.
        real_done(self)
        if "1/2" in self.label:
            with open(path, "a", encoding="utf-8") as f:
                f.write("Z")
    monkeypatch.setattr(corpus.Progress, "done", done)
    with pytest.raises(UserError, match=r"a.txt changed size \(5,700 -> 5,701 bytes\) while it "
                                        r"was being prepared: the corpus changed while it was "
                                        r"read; run again"):
        store.open_store(config.data, verbose=False)


def test_a_line_said_during_a_terminal_progress_bar_clears_the_bar_first():
    import io

    from smallgpt_jax.store import corpus
    from smallgpt_jax.system import console

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    progress = corpus.Progress("reading", 100, stream=term)
    progress.add(nbytes=100, ntokens=10)
    progress._draw(progress.t0 + 1)
    console.say("note", term)
    assert term.getvalue().endswith("\r\x1b[Knote\n")
