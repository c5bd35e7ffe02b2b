"""``python -m src.evaluate ckpt_path=<run>/checkpoints/best.ckpt [overrides]``.

Runs the end-of-training reports and diagnosis (classification report, worst samples, calibration,
``diagnosis.md``) for one saved checkpoint on the configured data; the config groups are the
training ones, so pass the same ``data=``/``model=`` overrides as the training run.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from src.cli import run_task


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    def task() -> None:
        from src.evaluation import evaluate_checkpoint

        evaluate_checkpoint(cfg)

    run_task(task)


if __name__ == "__main__":
    main()
