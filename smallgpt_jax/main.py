"""`python -m smallgpt_jax.main`: runs smallgpt_jax/cli/main.py (see its --help).

Only the documented command's name lives here; importing this module does nothing.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("smallgpt_jax.cli.main", run_name="__main__", alter_sys=True)
