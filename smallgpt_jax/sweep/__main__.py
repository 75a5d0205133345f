"""`python -m smallgpt_jax.sweep`: runs smallgpt_jax/sweep/command.py (see its --help).

Only the documented command's name lives here; importing this module does nothing.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("smallgpt_jax.sweep.command", run_name="__main__", alter_sys=True)
