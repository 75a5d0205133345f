"""Character and byte tokenizers: round trips, saving, and clear errors."""

import numpy as np
import pytest

from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers import tokenizer as tok_lib


def test_char_vocabulary_is_sorted_distinct_characters():
    tok = tok_lib.CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw"
    assert tok.vocab_size == 8


def test_char_round_trip_including_non_ascii():
    text = "Ünïcødé — ROMEO:\nWherefore art thou? 🙂"
    tok = tok_lib.CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text)
    assert tok.decode(ids) == text


def test_char_unknown_characters_are_named():
    tok = tok_lib.CharTokenizer.from_text("abc")
    with pytest.raises(UserError) as e:
        tok.encode("abxyz")
    message = str(e.value)
    assert "'x'" in message and "'y'" in message and "'z'" in message
    assert "3 character(s)" in message


def test_save_and_load(tmp_path):
    tok = tok_lib.CharTokenizer.from_text("To be, or not to be")
    path = str(tmp_path / "tokenizer.json")
    tok_lib.save(tok, path)
    again = tok_lib.load(path)
    assert again.chars == tok.chars
    np.testing.assert_array_equal(again.encode("not to be"), tok.encode("not to be"))
    with pytest.raises(UserError, match="no tokenizer"):
        tok_lib.load(str(tmp_path / "missing.json"))


def test_byte_tokenizer_round_trips_any_text():
    tok = tok_lib.ByteTokenizer()
    text = "naïve café 日本語 🙂🚀"
    ids = tok.encode(text)
    assert tok.vocab_size == 256 and ids.max() < 256
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_word_tokenizer_keeps_spacing_and_punctuation(tmp_path):
    text = "To be, or not to be: that is the question.\n\tWhether 'tis nobler...  to be!"
    cut = text.index(" is")  # Pieces are cut before a space, as the store cuts them.
    tok = tok_lib.fit("word", [text[:cut], text[cut:]], vocab_size=21)
    assert tok.vocab_size == 21 and tok.pieces[0] == "<unk>"
    # Spaces and punctuation come first, then words by frequency ("be", "to" twice).
    assert {" ", ",", ".", "\n", "\t", "'", ":", "!"} <= set(tok.pieces[1:10])
    assert tok.pieces.index("be") < tok.pieces.index("question")
    ids = tok.encode(text)
    assert tok.decode(ids) == text  # Every word is known: exact round trip.
    # An unknown word is one token, and only it changes.
    assert tok.decode(tok.encode("to be, Hamlet!")) == "to be, <unk>!"
    path = str(tmp_path / "tokenizer.json")
    tok_lib.save(tok, path)
    np.testing.assert_array_equal(tok_lib.load(path).encode(text), ids)
    # The most frequent words win when the vocabulary is small.
    small = tok_lib.fit("word", [text], vocab_size=16)
    assert "be" in small.pieces and "question" not in small.pieces
    with pytest.raises(UserError, match="vocab_size=500 is larger than this training text "
                                        "supports: it has 20 distinct"):
        tok_lib.fit("word", [text], vocab_size=500)
