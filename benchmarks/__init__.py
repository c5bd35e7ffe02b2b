"""Speed benchmarks (not tests): ``python -m benchmarks.train_speed --help``."""
