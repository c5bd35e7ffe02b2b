"""Lightning glue for the diagnosis: per-epoch scalars, ``samples.npz``, figures, end-of-fit reports and verdict.

Both callbacks read ``pl_module.epoch_records("val")`` (the records the module already collected),
so nothing re-runs the model during training. Every rank calls it (it syncs); only rank 0 writes.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch

from src.calibration import reliability_figure
from src.callbacks import tensorboard_writer
from src.data import Split
from src.decomposition import Evaluation, epoch_scalars, evaluate_logits
from src.evaluation import evaluate_state, net_state, worst_figure, write_diagnosis
from src.figures import log_figure
from src.fileio import atomic_write
from src.samples import FIELDS, SAMPLES_FILE, Samples, SplitInfo

log = logging.getLogger(__name__)
INITIAL_CKPT = "initial.ckpt"


def _datamodule(trainer: L.Trainer):
    return trainer.datamodule  # type: ignore[attr-defined]


class RunDiagnosis(L.Callback):
    """Per val epoch: logs ``val/loss_from_correct``, ``val/loss_from_wrong``, ``val/loss_share_wrong``,
    ``val/n_wrong``, ``val/loss_top5pct_share``, ``val/conf_wrong_mean``, ``val/p_true_correct_mean``,
    ``val/loss_recomputed``, ``val/loss_recompute_error``, ``val/ece``, ``val/temperature``,
    ``val/nll_temperature_scaled``, ``val/ece_temperature_scaled``, and appends the per-sample outputs
    to ``<output_dir>/samples.npz`` (rewritten every ``write_every_n_epochs`` epochs and at the end).

    Before the first optimizer step it keeps the initial weights (and saves
    ``checkpoints/initial.ckpt``); at the end of fit it evaluates the initial, best (from the
    ``ModelCheckpoint`` callback) and last models on val and train and writes the reports, worst
    samples, figures and ``diagnosis.md`` (see :func:`src.evaluation.write_diagnosis`).
    """

    def __init__(
        self,
        output_dir: str,
        worst_k: int = 16,
        write_every_n_epochs: int = 1,
        reports: bool = True,
        save_initial_checkpoint: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.worst_k = worst_k
        self.write_every_n_epochs = write_every_n_epochs
        self.reports = reports
        self.save_initial_checkpoint = save_initial_checkpoint
        self.samples: Samples | None = None
        self._restored: dict[str, torch.Tensor] = {}
        self.initial: dict[str, torch.Tensor] | None = None
        self.diagnosis = None

    # -- resume: the history and the initial weights come back with the run ----------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The per-epoch val history, saved in every checkpoint so a resumed run keeps it exactly."""
        if self.samples is None or not self.samples.val_epochs:
            return {}
        history = self.samples.history
        state = {"epochs": torch.tensor(self.samples.epochs, dtype=torch.long)}
        state.update({f: torch.from_numpy(np.ascontiguousarray(getattr(history, f))) for f in FIELDS})
        state.update({f"calibration/{k}": torch.from_numpy(v) for k, v in history.calibration.items()})
        return state

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self._restored = dict(state_dict)

    def _restore_history(self) -> None:
        state, self._restored = self._restored, {}
        if not state or self.samples is None:
            return
        history = Evaluation(
            *(state[f].numpy() for f in FIELDS),
            calibration={k.split("/", 1)[1]: v.numpy() for k, v in state.items() if k.startswith("calibration/")},
        )
        for i, epoch in enumerate(state["epochs"].tolist()):
            self.samples.add_epoch(epoch, history[i])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        initial = self.output_dir / "checkpoints" / INITIAL_CKPT
        if trainer.ckpt_path and self.initial is None and initial.is_file():
            # resumed: the untrained weights were saved by the first attempt
            self.initial = net_state(torch.load(initial, map_location="cpu", weights_only=False)["state_dict"])

    # -- initial weights ----------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # here (not on_train_start) the module's own on_train_start has already computed the cap
        if self.initial is not None or trainer.global_step != 0:
            return
        self.initial = {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()}
        if self.save_initial_checkpoint and trainer.global_rank == 0:
            state = {f"net.{k}": v for k, v in self.initial.items()}
            state["loss_cap"] = pl_module.loss_cap.detach().cpu().clone()
            ckpt = {"state_dict": state, "epoch": -1, "global_step": 0}
            atomic_write(self.output_dir / "checkpoints" / INITIAL_CKPT, lambda handle: torch.save(ckpt, handle))

    # -- every validation epoch ---------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        rec = pl_module.epoch_records("val")
        ev = evaluate_logits(rec.logits, rec.target)
        scalars = epoch_scalars(rec.logits, rec.target, ev)
        pl_module.log_dict({f"val/{k}": torch.tensor(v, dtype=torch.float32) for k, v in scalars.items()}, on_epoch=True)
        if trainer.global_rank != 0:
            return
        if self.samples is None:
            dm = _datamodule(trainer)
            self.samples = Samples(
                classes=list(pl_module.class_names),
                loss_cap=float(pl_module.loss_cap),
                val=SplitInfo.create(rec.index.cpu().numpy(), rec.target.cpu().numpy(), dm.val.paths),
            )
            self._restore_history()
        self.samples.loss_cap = float(pl_module.loss_cap)
        self.samples.add_epoch(trainer.current_epoch, ev)
        if self.write_every_n_epochs and len(self.samples.epochs) % self.write_every_n_epochs == 0:
            self.samples.save(self.output_dir / SAMPLES_FILE)

    # -- end of fit ---------------------------------------------------------------------------
    def _models(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, tuple[dict, int]]:
        models: dict[str, tuple[dict, int]] = {}
        if self.initial is not None:
            models["initial"] = (self.initial, -1)
        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
        if best and Path(best).is_file():
            ckpt = torch.load(best, map_location="cpu", weights_only=False)
            models["best"] = (net_state(ckpt["state_dict"]), int(ckpt.get("epoch", -1)))
        last = {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()}
        models["last"] = (last, self.samples.epochs[-1] if self.samples else -1)
        return models

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0 or self.samples is None or not self.samples.epochs:
            return
        dm = _datamodule(trainer)
        self.samples.train = SplitInfo.create(range(len(dm.train)), dm.train.y.cpu().numpy(), dm.train.paths)
        self.samples.models, self.samples.model_epoch = {}, {}
        if self.reports:
            net = copy.deepcopy(pl_module.net).cpu()
            splits = {"val": _cpu(dm.val), "train": _cpu(dm.train)}
            for name, (state, epoch) in self._models(trainer, pl_module).items():
                self.samples.models[name] = evaluate_state(net, state, splits)
                self.samples.model_epoch[name] = epoch
        self.diagnosis = write_diagnosis(
            self.output_dir,
            self.samples,
            dm.val.x.cpu(),
            self.worst_k,
            tensorboard_writer(trainer),
            trainer.global_step,
        )
        print(f"\n{self.diagnosis.summary}\nFull diagnosis: {self.output_dir / 'diagnosis.md'}")


def _cpu(split: Split) -> Split:
    return Split(split.x.cpu(), split.y.cpu(), split.paths)


class DiagnosisFigures(L.Callback):
    """Every ``every_n_epochs`` validation epochs (and the last one): a reliability diagram
    (``val/reliability``) and an image grid of the ``worst_k`` highest-loss val samples captioned
    true / predicted / p(true) (``val/worst_samples``), as TensorBoard figures. ``0`` turns a part off.
    """

    def __init__(self, every_n_epochs: int = 10, worst_k: int = 16, reliability: bool = True,
                 worst_images: bool = True) -> None:
        self.every_n_epochs = every_n_epochs
        self.worst_k = worst_k
        self.reliability = reliability
        self.worst_images = worst_images

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
        return bool(self.every_n_epochs) and (epoch % self.every_n_epochs == 0 or last)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._due(trainer) or not (self.reliability or self.worst_images):
            return
        rec = pl_module.epoch_records("val")  # every rank: it syncs
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        ev = evaluate_logits(rec.logits, rec.target, calibrate=False)
        epoch = trainer.current_epoch
        if self.reliability:
            correct = ev.correct(rec.target.cpu().numpy())
            fig = reliability_figure(ev.conf, correct, title=f"val, epoch {epoch}")
            log_figure(writer, "val/reliability", fig, trainer.global_step)
        if self.worst_images and self.worst_k > 0:
            dm = _datamodule(trainer)
            info = SplitInfo.create(rec.index.cpu().numpy(), rec.target.cpu().numpy(), dm.val.paths)
            view = Samples(classes=list(pl_module.class_names), loss_cap=float(pl_module.loss_cap), val=info)
            fig = worst_figure(view, ev, dm.val.x.cpu(), self.worst_k)
            log_figure(writer, "val/worst_samples", fig, trainer.global_step)
