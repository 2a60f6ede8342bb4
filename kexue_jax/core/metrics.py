"""Metrics to JSONL, a tqdm progress bar with steps/s and ETA, and PNG figures.

One JSON object per line in `workdir/metrics.jsonl`: {"step": int, "<name>": float, ...}. A resumed run
first drops the lines past the restored step, so the file always describes one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["MetricWriter", "Progress", "save_image_grid", "plot_curves", "read_jsonl", "write_results"]


def read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_results(workdir: str, results: Mapping[str, Any]) -> dict[str, float]:
    """Writes a runner's final metrics to `workdir/results.json` (the experiment contract) and returns them.

    Values are cast to float; the file is written to a temporary name and renamed, so a reader never sees
    half a file.
    """
    os.makedirs(workdir, exist_ok=True)
    results = {k: float(np.asarray(v)) for k, v in results.items()}
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return results


class MetricWriter:
    """Appends metric rows to `workdir/metrics.jsonl`.

    Only JAX process 0 touches the file: on a multi-host run every process runs the same loop, and N
    processes appending the same rows to one shared file (or truncating it at once) would corrupt it.
    """

    def __init__(self, workdir: str, *, filename: str = "metrics.jsonl", resume_step: int | None = None):
        import jax

        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, filename)
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None and os.path.exists(self.path):
            # Rows after the resumed step are redone; at that step only the training-log rows are kept (an
            # evaluation row there may be missing after a kill, so the trainer redoes it).
            rows = [r for r in read_jsonl(self.path) if r.get("step", 0) < resume_step
                    or (r.get("step", 0) == resume_step and all(k == "step" or k.startswith("train/") for k in r))]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            os.replace(tmp, self.path)  # atomic: a crash here leaves the old or the new file, whole

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.active:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            v = float(np.asarray(v))
            row[k] = v if math.isfinite(v) else str(v)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class Progress:
    """A tqdm bar over steps (tqdm shows steps/s and the ETA); `enabled=False` or TQDM_DISABLE=1 silences it."""

    def __init__(self, total: int, initial: int = 0, *, desc: str = "train", enabled: bool = True):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled,
                         dynamic_ncols=True, mininterval=1.0)
        self._t0 = time.perf_counter()
        self._initial = initial

    def update(self, n: int, metrics: Mapping[str, float] | None = None) -> None:
        if metrics:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:4]}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def save_image_grid(images: np.ndarray, path: str, *, ncol: int | None = None, title: str | None = None) -> None:
    """Saves [n, h, w] or [n, h, w, c] images (values in [0, 1]) as one PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    n = images.shape[0]
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    h, w = images.shape[1:3]
    canvas_shape = (nrow * (h + 1) + 1, ncol * (w + 1) + 1) + images.shape[3:]
    canvas = np.ones(canvas_shape, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = images[i]
    fig = plt.figure(figsize=(max(2.0, ncol * w / 16), max(2.0, nrow * h / 16)), dpi=100)
    ax = fig.add_axes([0, 0, 1, 0.93 if title else 1])
    ax.imshow(np.clip(canvas, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def plot_curves(rows: Iterable[Mapping[str, Any]], keys: Iterable[str], path: str, *, logy: bool = False) -> None:
    """Plots scalar curves (one panel per key) from metric rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        ax.plot(*zip(*pts))
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step")
        if logy:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
