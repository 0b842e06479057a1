"""What a run writes beside its synthetic set (``pipeline/results/synthetic.py``): summary.json,
config.yaml, grid.png, curves.png.

``path`` is a local path or any fsspec URL. Files are written to a temporary name and moved,
so a crash never leaves a half-written file under the final name.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from m3d_condense.pipeline.config.loader import to_yaml  # noqa: E402
from m3d_condense.pipeline.config.schema import RunConfig  # noqa: E402
from m3d_condense.pipeline.data import storage  # noqa: E402


def _atomic(path, write) -> str:
    """``write(file object)`` into memory, then one atomic write to ``path``."""
    buf = io.BytesIO()
    write(buf)
    storage.write_bytes_atomic(str(path), buf.getvalue())
    return str(path)


def write_json(path, obj: Any) -> str:
    return _atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_json(path) -> Any:
    return json.loads(storage.read_bytes(str(path)))


def write_config(path, cfg: RunConfig) -> str:
    """config.yaml: every key of the run (``config.read_config`` loads it back)."""
    return _atomic(path, lambda f: f.write(to_yaml(cfg).encode()))


def _save_figure(fig, path) -> str:
    out = _atomic(path, lambda f: fig.savefig(f, dpi=100, bbox_inches="tight", format="png"))
    plt.close(fig)
    return out


def plot_grid(path: str | Path, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
              max_per_class: int = 20, max_classes: int = 100) -> str:
    """One row per class of decoded images (N, C, H, W) in [0, 1]; at most ``max_per_class``
    columns and ``max_classes`` rows."""
    classes = sorted(set(labels.tolist()))[:max_classes]
    rows = [images[labels == c][:max_per_class] for c in classes]
    cols = max(len(r) for r in rows)
    _, ch, h, w = images.shape
    canvas = np.ones((len(rows) * (h + 1), cols * (w + 1), 3), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            pix = img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            canvas[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = pix if ch == 3 else pix[..., :1]
    scale = max(1.0, 48.0 / h)
    fig, ax = plt.subplots(figsize=(max(3, cols * w * scale / 100 + 1.5), max(2, len(rows) * h * scale / 100 + 0.5)))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([i * (h + 1) + h / 2 for i in range(len(rows))], [class_names[c] for c in classes], fontsize=7)
    ax.set_xticks([])
    ax.set_title(f"synthetic set: {cols} decoded images per class", fontsize=9)
    return _save_figure(fig, path)


def plot_curves(path: str | Path, loss_history: list[tuple[int, list[float]]],
                eval_curves: dict[str, list[list[tuple[int, float]]]]) -> str:
    """Left: mean per-class MMD^2 over iterations. Right: test accuracy over epochs, one line
    per evaluation run, per architecture."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    if loss_history:
        t = [h[0] for h in loss_history]
        ax_loss.plot(t, [float(np.mean(h[1])) for h in loss_history], lw=1)
        ax_loss.set_yscale("log")
    else:
        ax_loss.text(0.5, 0.5, "no condensation (baseline)", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set(xlabel="iteration", ylabel="mean class MMD$^2$", title="condensation loss")
    for arch, runs in eval_curves.items():
        for i, curve in enumerate(runs):
            ax_acc.plot([e for e, _ in curve], [100 * a for _, a in curve], lw=1, marker="o", ms=3,
                        label=f"{arch} run {i}")
    if eval_curves:
        ax_acc.legend(fontsize=7)
    else:
        ax_acc.text(0.5, 0.5, "evaluation skipped", ha="center", va="center", transform=ax_acc.transAxes)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="evaluation")
    fig.tight_layout()
    return _save_figure(fig, path)
