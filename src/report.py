"""``python -m src.report <sweep folder>``: the repository-root spelling of ``python -m lossdiag.report``."""

from lossdiag.report import main

if __name__ == "__main__":
    main(prog="python -m src.report")
