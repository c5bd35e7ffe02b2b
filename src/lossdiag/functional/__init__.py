"""Pure torch/numpy functions: no Lightning, no files, no matplotlib."""
