"""PNG plots of a benchmark run (matplotlib, Agg): time vs M (log-log) per stage and system,
and prediction-throughput bars.  ``make_plots(run, out_dir, stem)`` -> list of paths."""
from __future__ import annotations

from pathlib import Path

from .report import SYSTEM_LABEL, floor_s, ok, rate, stage

STAGE_TITLES = (("assembly_s", "kernel-matrix assembly"), ("solve_s", "solve (Cholesky)"),
                ("train_s", "training, end to end"), ("symmetry_s", "symmetry detection"))
STYLE = {"gdmlc": ("C0", "o"), "sgdml_torch": ("C1", "s"), "sgdml_cpu": ("C2", "^"),
         "jax_contraction": ("C3", "D"), "jax_dense": ("C4", "v")}


def _labels_for(cases):
    present = {c["labels"] for c in cases}
    for lab in ("old", "default", "new"):
        if lab in present:
            return lab
    return next(iter(present), None)


def make_plots(run, out_dir, stem):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    cases = run.get("cases", [])
    for molecule in sorted({c["molecule"] for c in cases}):
        mcases = [c for c in cases if c["molecule"] == molecule]
        labels = _labels_for(mcases)
        for sym in (True, False):
            sel = sorted((c for c in mcases if c["labels"] == labels and c["symmetric"] == sym),
                         key=lambda c: c["n_train"])
            if not sel:
                continue
            fig, axes = plt.subplots(2, 2, figsize=(10, 8))
            drawn = False
            for ax, (key, title) in zip(axes.ravel(), STAGE_TITLES):
                systems = [s for s in STYLE if any(s in c["results"] for c in sel)]
                for s in systems:
                    pts = [(c["n_train"], stage(c["results"].get(s), key)) for c in sel]
                    pts = [(m, t) for m, t in pts if t]
                    if pts:
                        color, marker = STYLE[s]
                        ax.plot(*zip(*pts), marker=marker, color=color, label=SYSTEM_LABEL.get(s, s))
                        drawn = True
                floor_key = {"assembly_s": "assembly", "solve_s": "cholesky"}.get(key)
                if floor_key:
                    pts = [(c["n_train"], floor_s(c, floor_key)) for c in sel]
                    pts = [(m, t) for m, t in pts if t]
                    if pts:
                        ax.plot(*zip(*pts), "k--x", label="hardware floor")
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel("training set size M")
                ax.set_ylabel("seconds (median)")
                ax.set_title(title)
                ax.grid(True, which="both", alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8)
            fig.suptitle(f"{molecule}, {labels} labels, {'with' if sym else 'without'} symmetries "
                         f"(P={sel[-1]['n_perms']}) — {run.get('name', '')}")
            fig.tight_layout()
            if drawn:
                p = out_dir / f"{stem}-time-vs-M-{molecule}-{'sym' if sym else 'nosym'}.png"
                fig.savefig(p, dpi=110)
                paths.append(p)
            plt.close(fig)
        # throughput bars at the largest symmetric M (else the largest M)
        pool = [c for c in mcases if c["labels"] == labels]
        pool = [c for c in pool if c["symmetric"]] or pool
        case = max(pool, key=lambda c: c["n_train"])
        systems = [s for s in STYLE if ok(case["results"].get(s))]
        batches = sorted({int(b) for s in systems for b in case["results"][s].get("throughput", {})})
        if not systems or not batches:
            continue
        fig, ax = plt.subplots(figsize=(9, 5))
        width = 0.8 / len(systems)
        for k, s in enumerate(systems):
            vals = [rate(case["results"][s], b) or 0.0 for b in batches]
            xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(batches))]
            ax.bar(xs, vals, width, color=STYLE[s][0], label=SYSTEM_LABEL.get(s, s))
            for x, v in zip(xs, vals):
                if not v:  # skipped or not measured: say so instead of a silent gap
                    ax.annotate("not run", (x, 0), xycoords=("data", "axes fraction"), rotation=90,
                                ha="center", va="bottom", fontsize=7, xytext=(0, 3),
                                textcoords="offset points")
        ax.set_xticks(range(len(batches)))
        ax.set_xticklabels([f"batch {b}" for b in batches])
        ax.set_yscale("log")
        ax.set_ylabel("geometries / s (median)")
        ax.set_title(f"prediction throughput: {case['id']}")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out_dir / f"{stem}-throughput-{molecule}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
