"""The command lines and their plumbing (app) and config files (config_files).
`python -m smallgpt_jax.<command>` runs cli/<command>.py through the
module of that name at the top of the package.
"""
