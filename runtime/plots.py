"""Parity plot and force-error distribution (matplotlib, an optional extra)."""
from __future__ import annotations

import numpy as np


def parity_plot(path, E_pred, F_pred, ds, title=""):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("gdmlc: --plot needs matplotlib: pip install -e .[plot]") from None
    panels = 3 if ds.E is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4))
    f_unit = f"{ds.energy_unit}/{ds.length_unit}"
    k = 0
    if ds.E is not None:
        _parity(axes[0], ds.E, E_pred, f"energy ({ds.energy_unit})")
        k = 1
    _parity(axes[k], ds.F.ravel(), np.ravel(F_pred), f"force components ({f_unit})")
    err = np.abs(np.ravel(F_pred) - ds.F.ravel())
    axes[k + 1].hist(err, bins=60, color="tab:blue")
    axes[k + 1].set_xlabel(f"|force error| ({f_unit})")
    axes[k + 1].set_ylabel("count")
    axes[k + 1].set_title(f"MAE {err.mean():.3f}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parity(ax, ref, pred, label):
    ax.scatter(ref, pred, s=2, alpha=0.4)
    lo, hi = float(np.min(ref)), float(np.max(ref))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"reference {label}")
    ax.set_ylabel(f"predicted {label}")
