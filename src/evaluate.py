"""``python -m src.evaluate ckpt_path=<run>/checkpoints/best.ckpt [overrides]``.

Runs the end-of-training reports and diagnosis (classification report, worst samples, calibration,
``diagnosis.md``) for one saved checkpoint on the data the checkpoint's run was trained on
(read from ``<run>/.hydra/config.yaml``); ``data=``/``model=``/``loss=``/``seed=`` overrides on the
command line replace the run's values, e.g. to evaluate on another image folder.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from src.app.cli import one_line_hydra_errors, quote_paths, run_task
from src.app.console import quiet_warnings

quiet_warnings()


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    def task() -> None:
        from hydra.core.hydra_config import HydraConfig

        from src.app.evaluate import evaluate_checkpoint

        evaluate_checkpoint(cfg, overrides=HydraConfig.get().overrides.task)

    run_task(task)


if __name__ == "__main__":
    sys.argv[1:] = quote_paths(sys.argv[1:])  # a run folder's name holds "=": ckpt_path=<run>/checkpoints/best.ckpt
    with one_line_hydra_errors("src.evaluate"):
        main()
