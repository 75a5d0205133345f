"""The token store: a corpus's files (corpus_paths), read as a stream (corpus),
tokenized once by the passes (passes; in a child process when the
allocator is tuned: prepare_child) into memory-mapped files that every run
reads (store), with a manifest and checksums (manifest).
"""
