"""Models: ShallowNet, the per-sample recorder, the LightningModule."""
