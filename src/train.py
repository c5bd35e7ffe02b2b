"""``python -m src.train [overrides]``: the repository-root spelling of ``python -m lossdiag.train``."""

from lossdiag.train import cli, prepare_process

prepare_process(__name__)  # also in processes spawned for multi-process training (they import this module)

if __name__ == "__main__":
    cli("src.train")
