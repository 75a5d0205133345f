"""A run's workdir and its checkpoints: the writer, the reader, damaged
checkpoints and what to tell the user (faults), what a resume may change
(compat), a checksum per saved array, the workdir's layout and checks.
"""
