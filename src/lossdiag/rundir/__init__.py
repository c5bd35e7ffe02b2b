"""Everything about the run folder: paths, atomic writes, status, metrics CSV, samples, checkpoints, artifacts."""
