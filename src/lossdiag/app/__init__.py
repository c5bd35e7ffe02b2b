"""The application layer: the only package that reads the Hydra config or argv."""
