"""Text to token ids and back: the interface (base), the char and byte
tokenizers and loading any kind (tokenizer), byte-level BPE (bpe), words.
"""
