"""Eager argument checks shared by the optimizer factories.

Hyperparameters may be jax arrays or schedules (so that `optax.inject_hyperparams` can trace them);
only concrete Python / NumPy numbers are checked, before anything is compiled.
"""
import math
from typing import Any

import numpy as np


def concrete_number(x: Any) -> float | None:
  """Returns `x` as a float when it is a concrete Python/NumPy real number, else None."""
  if isinstance(x, bool):
    return None
  if isinstance(x, (int, float, np.integer, np.floating)):
    return float(x)
  if isinstance(x, np.ndarray) and x.ndim == 0 and np.issubdtype(x.dtype, np.number):
    return float(x)
  return None


def check_number(name: str, x: Any, *, minimum: float | None = 0.0, strict: bool = False,
                 maximum: float | None = None, strict_max: bool = False) -> None:
  """Raises ValueError("`name` must be ...; got x") for a concrete number out of range or not finite."""
  if callable(x):
    return
  v = concrete_number(x)
  if v is None:
    if isinstance(x, (str, bytes, tuple, list, dict)) or x is None:
      raise ValueError(f"`{name}` must be a finite real number; got {x!r}")
    return
  parts = ["a finite"]
  if minimum is not None:
    parts.append(("number > " if strict else "number >= ") + repr(minimum))
  else:
    parts.append("number")
  if maximum is not None:
    parts.append(("and < " if strict_max else "and <= ") + repr(maximum))
  expected = " ".join(parts)
  bad = not math.isfinite(v)
  if minimum is not None:
    bad |= v <= minimum if strict else v < minimum
  if maximum is not None:
    bad |= v >= maximum if strict_max else v > maximum
  if bad:
    raise ValueError(f"`{name}` must be {expected}; got {x!r}")


def check_choice(name: str, x: Any, choices: tuple[str, ...]) -> None:
  if x not in choices:
    raise ValueError(f"`{name}` must be one of {choices}; got {x!r}")


def check_bounds(name: str, bounds: Any) -> tuple[float, float] | None:
  """Validates an optional (low, high) box with 0 < low <= 1 <= high (gains and scales start at 1)."""
  if bounds is None:
    return None
  ok = isinstance(bounds, (tuple, list)) and len(bounds) == 2
  if ok:
    lo, hi = (concrete_number(b) for b in bounds)
    ok = lo is not None and hi is not None and 0.0 < lo <= 1.0 <= hi and math.isfinite(lo)
    if ok:
      return lo, hi
  raise ValueError(f"`{name}` must be None or a pair (low, high) with 0 < low <= 1 <= high; got {bounds!r}")
