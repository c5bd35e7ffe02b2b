"""Data: in-memory splits, batching, image-folder decoding, augmentation, generated folders."""
