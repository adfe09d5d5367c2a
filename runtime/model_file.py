"""The model file: an npz with a format version and everything needed to
recompile and predict anywhere, including the DSL source text itself.

Loading a model imports its stored DSL source, which is Python: like a
pickle, load only model files from sources you trust."""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

import compiler
from compiler.cache import generated_dir, write_atomic
from compiler.library import load_file

FORMAT = "gdmlc-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    pass


def _dsl_text(dsl):
    return Path(dsl.filename).read_text()


def save_model(model, path):
    if not model._trained:
        raise RuntimeError("nothing to save: the model is not trained")
    arrays = {
        "format": np.array(FORMAT), "format_version": np.array(FORMAT_VERSION),
        "compiler_version": np.array(compiler.__version__),
        "descriptor_name": np.array(model.descriptor_dsl.name),
        "descriptor_source": np.array(_dsl_text(model.descriptor_dsl)),
        "kernel_name": np.array(model.kernel_dsl.name),
        "kernel_source": np.array(_dsl_text(model.kernel_dsl)),
        "sigma": np.array(model.sigma), "lam": np.array(model.lam_used),
        "perms": model.perms, "z": model.z, "R_train": model.R_train, "alpha": model.alpha,
        "D_train": model.D_train, "B_train": model.B_train,
        "label_scale": np.array(model.label_scale),
        "energy_constant": np.array(np.nan if model.energy_constant is None else model.energy_constant),
        "info": np.array(json.dumps(model.info, default=_jsonable)),
    }
    if model.energy_weights is not None:
        arrays["energy_weights"] = np.asarray(model.energy_weights)
    path = Path(path)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"cannot store {type(x).__name__} in model info")


def _restore_dsl(text, name, kind):
    """Write stored DSL source into the cache (by content hash) and load it."""
    folder = generated_dir() / "dsl"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}_{hashlib.sha256(text.encode()).hexdigest()[:16]}.py"
    if not path.exists():
        write_atomic(path, text)
    entries = load_file(path)
    if name not in entries or entries[name].kind != kind:
        raise ModelFileError(f"the stored {kind} source does not define {name!r}")
    return entries[name]


def load_model(cls, path):
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = "not an npz archive" if "pickle" in str(exc) else str(exc)
        raise ModelFileError(f"{path}: not a readable npz model file ({reason})") from None
    if str(stored.get("format", "")) != FORMAT:
        raise ModelFileError(f"{path}: not a gdmlc model (keys: {', '.join(sorted(stored)) or 'none'}); "
                             "a dataset? train a model with `gdmlc train` first")
    try:
        version = int(stored["format_version"])
        if version > FORMAT_VERSION:
            raise ModelFileError(f"{path}: model format {version} is newer than this gdmlc reads "
                                 f"({FORMAT_VERSION}); upgrade gdmlc")
        descriptor = _restore_dsl(str(stored["descriptor_source"]), str(stored["descriptor_name"]), "descriptor")
        kernel = _restore_dsl(str(stored["kernel_source"]), str(stored["kernel_name"]), "kernel")
        model = cls(descriptor, kernel, sigma=float(stored["sigma"]), lam=float(stored["lam"]),
                    symmetries=stored["perms"], progress=False)
        model.z, model.R_train, model.alpha = stored["z"], stored["R_train"], stored["alpha"]
        model.perms = stored["perms"]
        model.n_atoms = model.R_train.shape[1]
        model.D_train, model.B_train = stored["D_train"], stored["B_train"]
        model.energy_weights = stored.get("energy_weights")  # absent: forces-only model
        model.energy_constraints = model.energy_weights is not None
        model.label_scale = float(stored["label_scale"])
        model.lam_used = float(stored["lam"])
        model.sigma = float(stored["sigma"])
        model._prepare(model.model.feature_permutations(model.perms, model.n_atoms))
        constant = float(stored["energy_constant"])
        model.energy_constant = None if np.isnan(constant) else constant
        model.info = json.loads(str(stored["info"]))
    except KeyError as exc:
        raise ModelFileError(f"{path}: model file is missing {exc}; it is corrupt or from another tool") from None
    except (ValueError, IndexError, TypeError, SyntaxError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{path}: model file is corrupt: {type(exc).__name__}: {exc}") from None
    return model
