"""Checkpoints written atomically, beside their final path (a Lightning ``CheckpointIO`` plugin).

Lightning's own writer stages the file in the system temp folder and then moves it; when that is
another file system (``/tmp`` on tmpfs) the move is a copy, and a kill during it leaves a truncated
``last.ckpt``: exactly the file a resume needs. Here the temp file sits next to the target and is
renamed over it (:func:`lossdiag.rundir.atomic.atomic_write`). No fsync: a checkpoint is written every epoch,
and the next one replaces it; a killed process still never leaves a truncated file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from lossdiag.rundir.atomic import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_torch_save(path, checkpoint, durable=False)
