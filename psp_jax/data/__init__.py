"""Data: the catalog of datasets, one run's `Dataset`, augmentation, training streams and the
checks of bad data; TFDS builders in data/builders/. Imports base only."""
