"""One run's data, made once from config.dataset: train_loop, evaluate.py, the preview and
class_weights read the dataset through it and through nothing else.

`Dataset(config.dataset)` looks up the catalog row, takes the class names and palette
(a folder dataset's classes.json is read here, and its files listed here, once per start)
and makes the TFDS builder. It prepares the data (process 0 first, on several hosts) and
gives the training stream and the evaluation examples, each read through the row's decode
and checked against the classes (psp_jax.data.checks).
"""

import importlib
import textwrap
from typing import Any, Iterator, Mapping

import jax
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from psp_jax.data import catalog, checks, classes, input_pipeline
from psp_jax.data.builders import folder


def load(dotted: str) -> Any:
  """'package.module.name' -> that object: a catalog row's builder class or decode."""
  module, name = dotted.rsplit('.', 1)
  return getattr(importlib.import_module(module), name)


class Dataset:
  """config.dataset as a catalog row, a TFDS builder, a decode and its classes."""

  def __init__(self, config):
    self.config = config
    self.entry = catalog.entry(config.name)
    if self.entry.source == catalog.FOLDER:
      names, painted = classes.read_folder(config.root, config.classes, config.palette)
      self.class_names, self.palette = names, painted or classes.default_palette(len(names))
      # Lists and stats every file, once: they name the prepared config.
      self.builder = folder.Folder(
          config=folder.config_for(config.root, config.img_suffix, config.seg_map_suffix,
                                   config.reduce_zero_label, len(names), painted or ()),
          data_dir=config.data_dir)
    else:
      self.class_names, self.palette = self.entry.class_names, self.entry.palette
      self.builder = self._registered_builder()
    read = load(self.entry.decode) if self.entry.decode else checks.read_example
    # example -> (image [H, W, 3] uint8, label [H, W, 1] class ids or 255), checked.
    self.decode = checks.decoder(len(self.class_names), read)

  def _registered_builder(self) -> tfds.core.DatasetBuilder:
    if self.entry.builder:
      load(self.entry.builder)  # importing its module registers it with TFDS
    return tfds.builder(self.config.name, data_dir=self.config.data_dir)

  def check_prepared(self) -> None:
    """Raises FileNotFoundError, naming the files and the folder, if the data cannot be read.

    That is: not prepared in its data_dir, and either config.dataset.prepare is False or
    the archives it is prepared from are missing from the TFDS manual dir. Cheap (no
    reading), so train.py calls it before any model or data work.
    """
    builder = self.builder
    if builder.is_prepared():
      return
    # Where builder.download_and_prepare() without a DownloadConfig looks, as train.py calls it.
    manual_dir = builder.data_dir_root / 'downloads' / 'manual'
    archives = self.entry.manual if self.entry.source == catalog.MANUAL else ()
    missing = [name for name in archives if not (manual_dir / name).exists()]
    if self.config.prepare and not missing:
      return
    name = self.config.name
    instructions = textwrap.dedent(builder.MANUAL_DOWNLOAD_INSTRUCTIONS or '')
    if not self.config.prepare:
      source = f' from {", ".join(archives)} in {manual_dir}' if archives else ''
      raise FileNotFoundError(
          f'{name} is not prepared in {builder.data_dir_root}, and '
          f'config.dataset.prepare=False. Set --config.dataset.prepare=True to prepare it there'
          f'{source} (once), or --config.dataset.data_dir to the folder that holds it.'
          + (f'\n{instructions}' if instructions else ''))
    raise FileNotFoundError(
        f'{name} is prepared from {", ".join(archives)}, but {manual_dir} lacks '
        f'{", ".join(missing)}. Put {"it" if len(missing) == 1 else "them"} there, '
        f'{"unmodified and not extracted" if all("." in n for n in missing) else "as below"}, '
        'then run the same command again: it prepares the dataset once.\n'
        + instructions)

  def prepare(self) -> None:
    """Prepares the data if config.dataset.prepare: process 0 first, so that a shared
    data_dir is written once; a builder that stores files unread (its row's
    check_after_prepare) has every image decoded once right after (checks.check_stored)."""
    if not self.config.prepare:
      return
    if jax.process_index() == 0:
      fresh = not self.builder.is_prepared()
      self.builder.download_and_prepare()
      if fresh and self.entry.check_after_prepare:
        checks.check_stored(self.builder)
    multihost_utils.sync_global_devices('dataset prepared')
    if jax.process_index() > 0:
      # Made before process 0 wrote the data, the builder would not read it: make it again
      # (a folder's with the same config, without listing its files again).
      self.builder = (folder.Folder(config=self.builder.builder_config,
                                    data_dir=self.config.data_dir)
                      if self.entry.source == catalog.FOLDER else self._registered_builder())
      self.builder.download_and_prepare()

  def train_stream(self, augment: Mapping[str, Any], per_device_batch: int, seed: int,
                   position: int) -> tf.data.Dataset:
    """config.dataset.train_split as input_pipeline.create_split batches, from `position`."""
    return input_pipeline.create_split(self.builder, self.config.train_split, augment,
                                       per_device_batch, seed=seed, decode=self.decode,
                                       position=position)

  def name_corrupt_images(self, batches, split: str) -> Iterator:
    """Yields from `batches` of `split`; an image that does not decode is named."""
    return checks.name_corrupt_images(batches, self.builder, split)

  def examples(self, split: str, count: int | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image [H, W, 3] uint8, label [H, W, 1]) of `split` in stored order, the first `count`."""
    stored = self.builder.as_dataset(split=split, shuffle_files=False)
    if count is not None:
      stored = stored.take(count)
    return self.name_corrupt_images(tfds.as_numpy(stored.map(self.decode)), split)

  def process_share(self, split: str) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int]:
    """(examples, their count) of this process's share of `split` (tfds.split_for_jax_process)."""
    part = tfds.split_for_jax_process(split, drop_remainder=False)
    stored = self.builder.as_dataset(split=part, shuffle_files=False).map(self.decode)
    total = self.builder.info.splits[part].num_examples
    logging.info('Process %d of %d evaluates its share of %s: %d of %d examples (%s).',
                 jax.process_index(), jax.process_count(), split, total,
                 self.builder.info.splits[split].num_examples, part)
    return self.name_corrupt_images(tfds.as_numpy(stored), split), total
