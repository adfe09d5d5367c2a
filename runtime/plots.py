"""Parity plot and force-error distribution (matplotlib, an optional extra)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compiler.atomic_io import atomic_writer

from .data import unit_labels


def pyplot():
    """matplotlib.pyplot without a display; ImportError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install -e '.[plot]'") from None
    return plt


def parity_plot(path, E_pred, F_pred, ds, title=""):
    """Parity panels and a force-error histogram, written atomically (format from the suffix, else PNG)."""
    plt = pyplot()
    panels = 3 if ds.E is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4))
    e_unit, f_unit = unit_labels(ds.energy_unit, ds.length_unit)
    k = 0
    if ds.E is not None:
        _parity(axes[0], ds.E, E_pred, f"energy ({e_unit})")
        k = 1
    _parity(axes[k], ds.F.ravel(), np.ravel(F_pred), f"force components ({f_unit})")
    err = np.abs(np.ravel(F_pred) - ds.F.ravel())
    axes[k + 1].hist(err, bins=60, color="tab:blue")
    axes[k + 1].set_xlabel(f"|force error| ({f_unit})")
    axes[k + 1].set_ylabel("count")
    axes[k + 1].set_title(f"MAE {err.mean():.3f}")
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_writer(path) as fh:
            fig.savefig(fh, dpi=120, format=Path(path).suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)


def _parity(ax, ref, pred, label):
    ax.scatter(ref, pred, s=2, alpha=0.4)
    lo, hi = float(np.min(ref)), float(np.max(ref))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"reference {label}")
    ax.set_ylabel(f"predicted {label}")
