"""The in-memory `Dataset` every loader returns: a dict of numpy arrays sharing a leading length N."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Dataset"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a dataset, held in host memory as numpy arrays.

    Attributes:
      name: the name it was loaded by ('digits', 'tfds:mnist', ...).
      split: the split it holds ('train', 'test', or a tfds split string).
      arrays: key -> array, all with the same leading length N ('image' uint8 [N, h, w, c] and 'label' int32
        [N] for images; 'x' float32 [N, 2] (and 'label' where there is one) for the 2-D toys). The arrays
        are read-only views, so a loader's cache cannot be changed by accident.
      levels: the number of grey levels of integer images (17 for digits, 256 for 8-bit images), which is
        what dequantisation y = (x + u) / levels and bits/dim need; None for continuous data.
      num_classes: the number of label classes, or None when there is no class label.
    """

    name: str
    split: str
    arrays: dict[str, np.ndarray]
    levels: int | None = None
    num_classes: int | None = None

    def __post_init__(self):
        if not isinstance(self.arrays, dict) or not self.arrays:
            raise ValueError(f"`arrays` must be a non-empty dict of key -> np.ndarray; got {self.arrays!r}")
        views = {}
        for key, value in self.arrays.items():
            if not isinstance(key, str) or not isinstance(value, np.ndarray) or value.ndim < 1:
                raise ValueError(f"`arrays` must map str keys to numpy arrays with a leading example axis; "
                                 f"got {key!r}: {type(value).__name__} {getattr(value, 'shape', '')}")
            view = value.view()
            view.flags.writeable = False
            views[key] = view
        lengths = {key: value.shape[0] for key, value in views.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"`arrays` must all have the same leading length; got {lengths}")
        for key in ("levels", "num_classes"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                                      or value < 2):
                raise ValueError(f"`{key}` must be None or an integer >= 2; got {value!r}")
        object.__setattr__(self, "arrays", views)

    def __len__(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def batch(self, indices: Any) -> dict[str, np.ndarray]:
        """The examples at `indices`, as key -> array [b, ...].

        An integer array [b] gathers with numpy fancy indexing (fresh, writable copies); a slice gives
        read-only views.
        """
        return {key: value[indices] for key, value in self.arrays.items()}

    @property
    def example_shape(self) -> dict[str, tuple[int, ...]]:
        """key -> the shape of one example (the array shape without the leading N)."""
        return {key: tuple(value.shape[1:]) for key, value in self.arrays.items()}

    def __repr__(self) -> str:
        arrays = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self.arrays.items())
        return (f"Dataset(name={self.name!r}, split={self.split!r}, arrays={{{arrays}}}, levels={self.levels}, "
                f"num_classes={self.num_classes})")
