"""``python -m src.evaluate ckpt_path=<checkpoint> [overrides]``: the repository-root spelling of
``python -m lossdiag.evaluate``."""

from lossdiag.evaluate import cli

if __name__ == "__main__":
    cli("src.evaluate")
