"""The repository-root entry points: ``python -m src.train``, ``python -m src.evaluate``, ``python -m src.report``.

Each is a thin alias of the installed package's own (``python -m lossdiag.train`` and so on, which work from
any folder). Nothing else lives here: the code is the ``lossdiag`` package in ``src/lossdiag/``.
"""
