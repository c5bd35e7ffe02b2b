"""``python -m src.train [overrides]``: train ShallowNet and log everything to the run folder.

Heavy imports (torch, Lightning) happen inside the task, so ``--help`` and ``--cfg job`` are instant.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from src.cli import run_task


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    def task() -> float | None:
        from src.summary import recorded_run

        # everything the job does goes inside: <run>/metrics.json then says complete or failed (and why)
        with recorded_run(cfg.paths.output_dir) as outcome:
            from src.pipeline import train

            outcome.metrics = metrics = train(cfg)
        metric = cfg.get("optimized_metric")
        return metrics.get(metric) if metric else None

    return run_task(task)


if __name__ == "__main__":
    main()
