"""Process plumbing every part uses: the one error type for a user's mistake
and atomic writes (errors), the one printer for a line to the user
(console), process and run settings (runtime), file locks (lock), joining a
multi-host job (distributed), the least memory a config needs against this
machine's (footprint, which config.validate calls).
"""
