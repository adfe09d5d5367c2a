"""The benchmarks' data: rMD17 files in ../shared/data/rmd17, else the embedded ethanol data."""
from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "rmd17"
FALLBACK_DATA = REPO / "runtime" / "default_data" / "ethanol_gfn2xtb_500K.npz"


def rmd17_file(molecule, part="train", data_dir=DEFAULT_DATA_DIR):
    """Path of one rMD17 split file (part 'train' or 'test'); it may not exist."""
    return Path(data_dir) / f"rmd17_{molecule}_{part}_01.npz"


def molecule_files(data_dir, molecule):
    """{'train', 'test', 'kind'} for a molecule, or None.  Without rMD17, ethanol falls back to
    the embedded GFN2-xTB data (frames 0..1999 train, 2000..2999 test; one label set)."""
    train = rmd17_file(molecule, "train", data_dir)
    test = rmd17_file(molecule, "test", data_dir)
    if train.is_file() and test.is_file():
        return {"kind": "rmd17", "train": str(train), "test": str(test)}
    if molecule == "ethanol" and FALLBACK_DATA.is_file():
        return {"kind": "default", "train": str(FALLBACK_DATA), "test": str(FALLBACK_DATA),
                "train_frames": [0, 2000], "test_frames": [2000, 3000]}
    return None


def load_split(files, labels):
    """(train Dataset, test Dataset) for one label set ('old', 'new' or 'default')."""
    from runtime.data import load_dataset
    lab = "new" if labels == "default" else labels
    if files["kind"] == "default":
        ds = load_dataset(files["train"], labels=lab)
        a, b = files["train_frames"]
        c, d = files["test_frames"]
        return ds.subset(np.arange(a, min(b, len(ds)))), ds.subset(np.arange(c, min(d, len(ds))))
    return load_dataset(files["train"], labels=lab), load_dataset(files["test"], labels=lab)


def training_indices(n_frames, m, seed):
    """M training frames: the first M of one seeded permutation (so sizes are nested), sorted."""
    return np.sort(np.random.default_rng(seed).permutation(n_frames)[:m])
