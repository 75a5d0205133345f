"""Flipped bits in a checkpoint's array data: one error that names the step and
the array, for training and for sampling, whichever layer notices them.

Orbax writes each array (over 1 KB; smaller ones sit in OCDBT's index, which
has a CRC-32C of its own) as one zstd frame inside an OCDBT data file, several
arrays to a file, grouped and ordered differently from save to save. Where a
flipped bit lands decides who notices: in the bytes of a block, zstd decodes
them anyway and only the project's checksums can tell (checkpoint/checksum.py);
in a frame's or block's header, zstd refuses to decompress. So each test
finds its frame by parsing the file, never by a fixed offset.
"""

import glob
import os
import re

import jax
import numpy as np
import pytest

from conftest import tiny_config
from smallgpt_jax.checkpoint import writer as checkpoint, faults, reader as loading
from smallgpt_jax.system.errors import UserError
from test_checkpoint import fresh_state, perturbed_state, save_steps

ZSTD_MAGIC = bytes([0x28, 0xB5, 0x2F, 0xFD])
NODE_MAGIC = bytes([0x0C, 0xDB, 0x20, 0xDE])  # OCDBT's index node: a header, a zstd frame.
RAW, COMPRESSED = 0, 2  # zstd's block types (RFC 8878, 3.1.1.2).


def zstd_blocks(data):
    """(header offset, type, size) of the first block of each array's zstd frame in `data`."""
    nodes = [m.start() for m in re.finditer(re.escape(NODE_MAGIC), data)]
    blocks, start = [], data.find(ZSTD_MAGIC)
    while start >= 0:
        # An index node's frame follows its 14-byte header: not an array's.
        ours = not any(0 < start - node <= 32 for node in nodes)
        descriptor = data[start + 4]
        assert not descriptor & 0x04, "zstd frames with a checksum of their own"
        size_bytes = [0, 2, 4, 8][descriptor >> 6] or (1 if descriptor & 0x20 else 0)
        header = (start + 5 + (0 if descriptor & 0x20 else 1)
                  + [0, 1, 2, 4][descriptor & 0x03] + size_bytes)
        word = int.from_bytes(data[header:header + 3], "little")
        if ours:
            blocks.append((header, (word >> 1) & 3, word >> 3))
        start = data.find(ZSTD_MAGIC, header + 3 + word // 8)  # Not inside this block.
    return blocks


def flip_a_bit(step_folder, block_type, where):
    """Flips one bit of the first block of type `block_type` in the step's
    largest array data file: `where(header, size)` -> (offset, bit)."""
    files = glob.glob(os.path.join(step_folder, "state", "ocdbt.*", "d", "*"))
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        found = [(h, size) for h, kind, size in zstd_blocks(data) if kind == block_type]
        assert found, (f"no zstd block of type {block_type} in {path} ({len(data)} bytes; "
                       f"arrays' blocks {zstd_blocks(data)}): Orbax's format changed")
        offset, bit = where(*found[0])
        data[offset] ^= bit
        f.seek(0)
        f.write(data)


def inside_the_data(header, size):
    """A bit in the middle of a raw block's bytes: zstd copies them as they are."""
    return header + 3 + size // 2, 0x10


def in_the_block_type(header, size):
    """Block type 2 (compressed) becomes 3, which zstd reserves and rejects."""
    return header, 0x02


def random_bits(rng, shape):
    """Floats of random bits, all finite: incompressible, so zstd stores
    their array as a raw block, whose every byte is the array's."""
    bits = rng.integers(0, 2**32, shape, dtype=np.uint32)
    bits[((bits >> 23) & 0xFF) == 0xFF] ^= 1 << 23  # Exponent all ones: inf or NaN.
    return bits.view(np.float32)


def random_bits_state(config):
    """A TrainState whose floats are `random_bits`."""
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda x: random_bits(rng, x.shape) if x.dtype == np.float32 else x,
                        fresh_state(config))


def params_only(tmp_path, config, values):
    """A run whose checkpoints hold one parameter array (what sampling reads), from `values`."""
    workdir = str(tmp_path / "sampled")
    tree = lambda: {"params": {"w": values()}, "step": np.array(0, np.int32)}
    save_steps(workdir, config, {1: (tree(), None), 2: (tree(), None)})
    return workdir


# The reads a failed restore drops report as unraisable (test_checkpoint_faults).
@pytest.mark.filterwarnings(
    "ignore:(?s).*RuntimeError. Event loop is closed:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings(
    "ignore:(?s).*See full TensorStore details:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("block_type,where,why", [
    (RAW, inside_the_data, r"differs from the checksum saved with it"),
    (COMPRESSED, in_the_block_type, r"cannot be decompressed \(Data corruption detected\)"),
], ids=["a block's bytes: the checksum", "a block's type: zstd"])
def test_flipped_bits_in_a_checkpoint_are_one_error_for_training_and_sampling(
        tmp_path, block_type, where, why):
    config, workdir = tiny_config(), str(tmp_path / "run")
    state = random_bits_state(config) if block_type == RAW else perturbed_state(config)
    save_steps(workdir, config, {1: (state, None), 2: (state, None)})
    flip_a_bit(os.path.join(workdir, "checkpoints", "2"), block_type, where)
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        with pytest.raises(UserError, match=rf"checkpoints/2 could not be restored \(the data "
                           rf"of \S+ {why}: changed on disk after the save\); .*resume_step=N "
                           r"\(N in 1\)\.$") as e:
            ckpt.restore_state(ckpt.resume_point(config.to_dict()), fresh_state(config))
    assert "\n" not in str(e.value)
    # Sampling reads the parameters alone: one array, the only frame.
    rng = np.random.default_rng(0)
    values = ((lambda: random_bits(rng, 20000)) if block_type == RAW
              else lambda: rng.standard_normal(20000).astype(np.float32))
    sampled = params_only(tmp_path, config, values)
    flip_a_bit(os.path.join(sampled, "checkpoints", "2"), block_type, where)
    with pytest.raises(UserError, match=rf"checkpoints/2 could not be read \(the data of "
                                        rf"params/w {why}: .*complete ones: 1\)\.$"):
        loading.load_params(sampled)
    assert loading.load_params(sampled, 1)[0]["w"].shape == (20000,)


def test_zstd_refusing_an_array_names_the_array_in_one_line():
    # TensorStore's messages as flips in a frame's magic number, a block's type
    # and a block's size gave them (paths shortened).
    at = ('FAILED_PRECONDITION: Error reading "{}" in OCDBT database at local file '
          '"/run/checkpoints/2/state/": ')
    for chunk, said, array in [("params.w/0", "Unknown frame descriptor", "params/w"),
                               ("opt_state.1.0.mu.pos_embed/0.0", "Data corruption detected",
                                "opt_state/1/0/mu/pos_embed")]:
        error = ValueError(f"{at.format(chunk)}ZSTD_decompressStream() failed: {said}; at byte "
                           "0; at uncompressed byte 0 [tensorstore_spec='{...}']")
        assert faults.reason(error) == (f"the data of {array} cannot be decompressed ({said}): "
                                        "changed on disk after the save")
    # A size that points past the data reads as a short file does: the array is named already.
    short = at.format("params.w/0.0") + "Truncated Zstd-compressed stream; at byte 15159"
    assert faults.reason(ValueError(short)) == (
        'FAILED_PRECONDITION: Error reading "params.w/0.0" in OCDBT database at local file '
        '"/run/checkpoints/2/state/": Truncated Zstd-compressed stream; at byte 15159')
