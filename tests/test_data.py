"""Finding, downloading, reading and batching text."""

import functools
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

from smallgpt_jax import data
from smallgpt_jax.store import corpus_paths
from smallgpt_jax.system.errors import UserError


def test_sampler_is_a_pure_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.int32)
    a = data.sample_batch(tokens, seed=3, step=7, batch_size=4, block_size=8)
    b = data.sample_batch(tokens, seed=3, step=7, batch_size=4, block_size=8)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 9)
    # Windows are contiguous runs of the corpus (inputs + next-token targets).
    np.testing.assert_array_equal(np.diff(a, axis=1), 1)
    assert not np.array_equal(a, data.sample_batch(tokens, 3, 8, 4, 8))
    assert not np.array_equal(a, data.sample_batch(tokens, 4, 7, 4, 8))
    assert not np.array_equal(a, data.sample_batch(tokens, 3, 7, 4, 8, stream=1))
    # Every window fits: the last target is inside the corpus.
    big = data.sample_batch(tokens, 0, 0, 10_000, 8)
    assert big.max() <= 999 and big.min() >= 0


def _rss_file_kb() -> int:
    """Resident pages of mapped files (on tmpfs, where tmp_path may be, RssShmem)."""
    with open("/proc/self/status") as f:
        return sum(int(line.split()[1]) for line in f
                   if line.startswith(("RssFile:", "RssShmem:")))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_batches_from_a_store_file_leave_none_of_it_resident(tmp_path):
    # 64 MB of ids: through the mapping, 400 batches of 64 windows would map
    # most of its pages into the process (the kernel maps a window's
    # neighbours with it), as much memory as the file.
    path = tmp_path / "train.bin"
    np.random.default_rng(0).integers(0, 65, size=64 << 20, dtype=np.uint8).tofile(path)
    tokens = data.map_tokens(str(path), np.uint8, 64 << 20)
    in_memory = np.fromfile(path, np.uint8)
    before = _rss_file_kb()
    for step in range(400):
        batch = data.sample_batch(tokens, 0, step, 64, 256)
        if step % 100 == 0:  # The same batches as from the ids in memory.
            np.testing.assert_array_equal(batch, data.sample_batch(in_memory, 0, step, 64, 256))
    assert _rss_file_kb() - before < 8 << 10, "the store's pages stayed resident"
    touched = tokens[::4096].sum()  # Reading every page through the mapping maps it...
    assert touched > 0 and _rss_file_kb() - before > 32 << 10  # ...which this test can see.
    # Replaced by name (the store prepared again), the file read is still the mapped one.
    os.replace(tmp_path / "train.bin", tmp_path / "old.bin")
    (tmp_path / "train.bin").write_bytes(b"\0" * (64 << 20))
    np.testing.assert_array_equal(data.sample_batch(tokens, 0, 7, 4, 16),
                                  data.sample_batch(in_memory, 0, 7, 4, 16))


def test_split_is_contiguous():
    train, val = data.split_text("abcdefghij", 0.9)
    assert (train, val) == ("abcdefghi", "j")


def test_path_may_be_file_directory_or_glob(tmp_path):
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second")
    (tmp_path / "c.md").write_text("ignored")
    assert corpus_paths.resolve_paths(str(tmp_path / "a.txt")) == [str(tmp_path / "a.txt")]
    assert corpus_paths.resolve_paths(str(tmp_path)) == [str(tmp_path / "a.txt"),
                                                 str(tmp_path / "sub" / "b.txt")]
    assert corpus_paths.resolve_paths(str(tmp_path / "*.md")) == [str(tmp_path / "c.md")]
    with pytest.raises(UserError, match="no such file"):
        corpus_paths.resolve_paths(str(tmp_path / "nope.txt"))


def test_a_path_that_exists_is_that_path_and_each_file_is_read_once(tmp_path):
    # A folder whose name is also a glob matching a sibling: the folder is meant.
    (tmp_path / "data1").mkdir()
    (tmp_path / "data1" / "sibling.txt").write_text("not this")
    (tmp_path / "data[1]").mkdir()
    (tmp_path / "data[1]" / "mine.txt").write_text("this")
    assert corpus_paths.resolve_paths(str(tmp_path / "data[1]")) == [
        str(tmp_path / "data[1]" / "mine.txt")]
    # A loop (a link to the folder above) and a second name for a file: each
    # real file once, by the first of its names in order.
    top = tmp_path / "loop"
    (top / "sub").mkdir(parents=True)
    (top / "a.txt").write_text("a")
    (top / "sub" / "b.txt").write_text("b")
    os.symlink("..", top / "sub" / "up")
    os.symlink("..", top / "sub" / "up2")  # Two loops: a walk that follows both never ends.
    os.symlink("a.txt", top / "z.txt")
    expected = [str(top / "a.txt"), str(top / "sub" / "b.txt")]
    assert corpus_paths.resolve_paths(str(top)) == expected
    assert corpus_paths.resolve_paths(str(top / "**" / "*.txt")) == expected
    assert corpus_paths.resolve_paths(str(top / "*.txt")) == expected[:1]
    # A folder linked from elsewhere is walked, once.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "c.txt").write_text("c")
    os.symlink(tmp_path / "other", top / "linked")
    assert corpus_paths.resolve_paths(str(top)) == [
        str(top / "a.txt"), str(top / "linked" / "c.txt"), str(top / "sub" / "b.txt")]


def test_bad_files_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        data.read_text(str(empty))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf".encode() + b"\xe9 au lait")
    with pytest.raises(UserError, match=r"latin1.txt is not valid UTF-8: byte 0xe9 at offset 3"):
        data.read_text(str(bad))


def test_too_short_split_is_refused():
    splits = data.Splits(np.arange(100), np.arange(5))
    with pytest.raises(UserError, match="validation split has 5 tokens"):
        data.check_long_enough(splits, block_size=16)


def _checksum(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_download_from_file_url_checks_and_writes_atomically(tmp_path):
    payload = b"some corpus\n" * 100
    src = tmp_path / "src.txt"
    src.write_bytes(payload)
    dest = tmp_path / "cache" / "x" / "input.txt"
    data.download(src.as_uri(), str(dest), _checksum(payload))
    assert dest.read_bytes() == payload
    # A checksum mismatch leaves nothing behind (no partial or bad file).
    dest2 = tmp_path / "cache" / "y" / "input.txt"
    with pytest.raises(UserError, match="sha256 mismatch"):
        data.download(src.as_uri(), str(dest2), "0" * 64)
    assert os.listdir(dest2.parent) == []


def test_download_from_loopback_http_server(tmp_path):
    payload = "To be, or not to be\n".encode() * 500
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "input.txt").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "served"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/input.txt"
        dest = tmp_path / "out" / "input.txt"
        data.download(url, str(dest), _checksum(payload), len(payload))
        assert dest.read_bytes() == payload
    finally:
        server.shutdown()


def test_named_dataset_lookup_order_and_offline_message(tmp_path, monkeypatch):
    url, filename, size, sha = data.DATASETS["tinyshakespeare"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SMALLGPT_DATA_DIR", str(tmp_path / "data"))
    # Nothing local, and the download fails: the message says how to fix it.
    monkeypatch.setitem(data.DATASETS, "tinyshakespeare",
                        ("http://127.0.0.1:9/input.txt", filename, size, sha))
    with pytest.raises(UserError) as e:
        data.find_dataset("tinyshakespeare")
    msg = str(e.value)
    assert "SMALLGPT_DATA_DIR" in msg and "--config.data.path" in msg
    assert os.path.join(str(tmp_path / "cache"), "smallgpt_jax", "tinyshakespeare") in msg
    # The user cache is found...
    cached = tmp_path / "cache" / "smallgpt_jax" / "tinyshakespeare" / filename
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text("cached copy")
    assert data.find_dataset("tinyshakespeare") == str(cached)
    # ...but $SMALLGPT_DATA_DIR comes first.
    local = tmp_path / "data" / "tinyshakespeare" / filename
    local.parent.mkdir(parents=True)
    local.write_text("local copy")
    assert data.find_dataset("tinyshakespeare") == str(local)
    with pytest.raises(UserError, match="unknown dataset"):
        data.find_dataset("wikipedia")
