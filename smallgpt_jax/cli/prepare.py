r"""Command line: tokenize a corpus into the token store, without training.

    python -m smallgpt_jax.prepare --config=configs/char_cpu.py \
        [--config.data.path=BIG_DIR_OR_GLOB] [--config.data.tokenizer=bpe ...]

Training does the same automatically on first use; preparing alone suits a
cluster (prepare once, then train many runs or a sweep from the same store).
Prints the store's folder and what it holds. A second call with the same
corpus and settings finds it prepared and returns at once.

`--verify` checks every block of a prepared store against its checksums
(every open checks a sample); a damaged store is prepared again.
"""

from __future__ import annotations

from absl import flags

from smallgpt_jax.cli import app as cli
from smallgpt_jax.cli.config_files import define_config_flag
from smallgpt_jax.config import validate
from smallgpt_jax.system import runtime

_CONFIG = define_config_flag("Path to a config file, e.g. configs/char_cpu.py.")
_VERIFY = flags.DEFINE_bool("verify", False, "Check every block of the store against its "
                            "checksums (each open checks a sample); a damaged store is "
                            "prepared again.")


def main(argv: list[str]) -> None:
    # Not setup_process: its allocator setting (one malloc arena, for XLA's
    # step buffers) serialises the `tokenizers` threads' allocations and made
    # BPE training and encoding 2-3 times slower; this process runs no XLA.
    runtime.quiet_library_logs()
    from smallgpt_jax.store import store  # After the flags: a fast --help.
    config = _CONFIG.value
    with cli.user_errors():
        validate(config, machine=False)
        prepared = store.open_store(config.data, verify=_VERIFY.value)
        m = prepared.manifest
        if _VERIFY.value:
            print("verified: every block of train.bin and val.bin matches its checksum")
        print(f"{prepared.directory}: {m['train_tokens']:,} train / {m['val_tokens']:,} val "
              f"tokens ({m['dtype']}), {m['tokenizer']['kind']} vocabulary "
              f"{m['tokenizer']['vocab_size']}, from {len(m['sources'])} file(s), "
              f"{sum(s['size'] for s in m['sources']) / 1e6:,.1f} MB")


def run() -> None:
    flags.mark_flag_as_required("config")
    cli.run_app(main)


if __name__ == "__main__":
    run()
