"""Reading and validating force-field training data.

`load_dataset` reads sGDML dataset .npz files, rMD17 .npz files and extended
XYZ files into a `Dataset`; `validate_arrays` checks user arrays the same way.
Datasets may carry Hessians d2E/dx2 (energy unit / length unit^2) for all or
some frames: an sGDML npz's `H` (K, 3N, 3N) or (K, N, 3, N, 3), with
`H_frames` (K,) naming the frames when K is not every frame; in extended XYZ a
per-frame info entry of 9N^2 numbers (frames without it have no Hessian).
Every problem with the data raises `DatasetError`, whose message names the
file (or "input"), the key and, where it applies, the frame and atom.
Frame and atom indices in messages are 0-based.

`check_force_energy_consistency` is a model-free check that energies and
forces describe the same potential (sign and units), returning warnings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import mixed

LABEL_SETS = ("new", "old")
MAX_ATOMIC_NUMBER = 118

_SGDML_KEYS = {"R", "z"}
_RMD17_KEYS = {"nuclear_charges", "coords"}
_EXPECTED_NPZ_KEYS = (
    "sGDML keys (R, z, F[, E, H, H_frames, name, theory, r_unit, e_unit]) or "
    "rMD17 keys (nuclear_charges, coords, energies, forces[, old_energies, old_forces])"
)
_RMD17_THEORY = {"new": "PBE/def2-SVP (rMD17)", "old": "PBE+vdW-TS (MD17, original labels)"}
_XYZ_SUFFIXES = (".xyz", ".extxyz")
# extended XYZ label keys tried in order when none is named (ASE's own, then the REF_ convention)
_XYZ_ENERGY_KEYS = ("energy", "REF_energy")
_XYZ_FORCES_KEYS = ("forces", "REF_forces")
_XYZ_HESSIAN_KEYS = ("hessian", "REF_hessian")
# A Hessian is symmetric; a frame is refused when |H - H^T| > RTOL * max|H| + ATOL (file units) anywhere,
# and symmetrised, (H + H^T) / 2, within it. RTOL admits round-off of stored values and the asymmetry of a
# careful finite-difference Hessian (1.4e-6 of max|H| for the embedded GFN2-xTB set before symmetrising);
# a wrong layout (N, N, 3, 3) or a transposed block is asymmetric at the scale of H itself.
HESSIAN_SYMMETRY_RTOL = 1e-5
HESSIAN_SYMMETRY_ATOL = 1e-8

# the embedded GFN2-xTB ethanol data (`gdmlc train` without a dataset)
DEFAULT_DATA = Path(__file__).resolve().parent / "default_data" / "ethanol_gfn2xtb_500K.npz"
# GFN2-xTB Hessians of 40 of its frames, plus the relaxed minimum (R_min, E_min, F_min, H_min)
DEFAULT_HESSIAN_DATA = DEFAULT_DATA.with_name("ethanol_gfn2xtb_500K_hessians.npz")


class DatasetError(ValueError):
    """Input data that cannot be used; the message says where and why."""


@dataclass(eq=False)  # array fields: a generated __eq__ would be ambiguous
class Dataset:
    R: np.ndarray  # (M, N, 3) float64 positions
    z: np.ndarray  # (N,) int64 atomic numbers; (M, N) per frame for several compositions, 0 = no atom (padded)
    F: np.ndarray | None  # (M, N, 3) float64 forces (= -dE/dR); None only if loaded with require_forces=False
    E: np.ndarray | None  # (M,) float64 energies
    name: str
    theory: str
    energy_unit: str
    length_unit: str
    source: str
    labels: str  # 'default' | 'new' | 'old'
    H: np.ndarray | None = None  # (K, 3N, 3N) float64 Hessians d2E/dx2 of frames H_frames, symmetric
    H_frames: np.ndarray | None = None  # (K,) int64 ascending frame indices; None exactly when H is None

    def __len__(self) -> int:
        return len(self.R)

    @property
    def n_atoms(self) -> int:
        """Atoms per frame (slots, for padded frames of several compositions)."""
        return self.z.shape[-1]

    @property
    def padded(self) -> bool:
        """Whether the frames have several compositions (z (M, N), runtime/mixed.py)."""
        return self.z.ndim == 2

    def subset(self, idx) -> Dataset:
        """The frames selected by an index array or boolean mask, as copies."""
        idx = np.atleast_1d(np.asarray(idx))
        R = self.R[idx]  # fancy indexing copies
        if len(R) == 0:
            raise DatasetError(f"{self.source}: subset selects no frames")
        H, H_frames = self._hessians_of(idx)
        return dataclasses.replace(
            self, R=R, z=self.z[idx] if self.padded else self.z.copy(), F=None if self.F is None else self.F[idx],
            E=None if self.E is None else self.E[idx], H=H, H_frames=H_frames,
        )

    def _hessians_of(self, idx):
        """(H, H_frames) of the frames `idx` selects, numbered as in the subset; (None, None) if none has one."""
        if self.H is None:
            return None, None
        slot = np.full(len(self), -1)  # frame -> its row in H, -1 without a Hessian
        slot[self.H_frames] = np.arange(len(self.H_frames))
        picked = slot[idx]
        has = picked >= 0
        if not has.any():
            return None, None
        return self.H[picked[has]], np.flatnonzero(has)

    def fingerprint(self) -> str:
        """sha256 hex of the shapes, then the bytes of R, z, E (if any), F, H_frames and H (if any).

        Arrays are hashed as little-endian C-contiguous float64/int64, so the
        value does not depend on how the data was loaded or on the platform.
        """
        h = hashlib.sha256()
        shapes = (self.R.shape, self.z.shape, None if self.E is None else self.E.shape,
                  None if self.F is None else self.F.shape)
        h.update(repr(shapes).encode())  # keeps differently shaped data with equal bytes apart
        # Hessians last, so that a dataset without them keeps the fingerprint it had before they existed
        hessians = () if self.H is None else ((self.H_frames, "<i8"), (self.H, "<f8"))
        for array, dtype in ((self.R, "<f8"), (self.z, "<i8"), (self.E, "<f8"), (self.F, "<f8"), *hessians):
            if array is not None:
                h.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
        return h.hexdigest()


# --------------------------------------------------------------------------- validation


def validate_arrays(R, F=None, E=None, z=None, where="input", H=None, H_frames=None) -> None:
    """Raise DatasetError unless the arrays form usable training data.

    R (M, N, 3) with M >= 1 and N >= 2, F of the same shape, E of shape (M,)
    or (M, 1), z of shape (N,) with atomic numbers 1..118; all finite.
    H, H_frames: Hessians as `checked_hessians` takes them.
    """
    R, _, _, _ = checked_arrays(R, F, E, z, where)
    checked_hessians(H, H_frames, R.shape[0], R.shape[1], where)


def checked_arrays(R, F, E, z, where, keys=None, require_forces=True):
    """Validate and return (R, F, E, z) as float64/int64 arrays, E flattened.

    `keys` maps 'R', 'F', 'E', 'z' to the names the caller's source uses
    (e.g. 'coords'), so that messages name what the user actually wrote.
    Without `require_forces`, missing forces are returned as None.
    """
    keys = {"R": "R", "F": "F", "E": "E", "z": "z", **(keys or {})}
    R = _float_array(R, where, keys["R"])
    if R.ndim != 3 or R.shape[2] != 3:
        raise DatasetError(f"{where}: {keys['R']}: expected shape (M, N, 3), got {R.shape}")
    n_frames, n_atoms = R.shape[:2]
    if n_frames < 1:
        raise DatasetError(f"{where}: {keys['R']}: expected at least 1 frame, got shape {R.shape}")
    if n_atoms < 2:
        raise DatasetError(f"{where}: {keys['R']}: expected at least 2 atoms, got shape {R.shape}")
    _check_finite(R, where, keys["R"])

    if F is None and require_forces:
        raise DatasetError(
            f"{where}: no forces ({keys['F']} is missing); force labels are required for training"
        )
    if F is not None:
        F = _float_array(F, where, keys["F"])
        if F.shape != R.shape:
            raise DatasetError(
                f"{where}: {keys['F']}: expected shape {R.shape} (same as {keys['R']}), got {F.shape}"
            )
        _check_finite(F, where, keys["F"])

    if E is not None:
        E = _float_array(E, where, keys["E"])
        if E.shape not in ((n_frames,), (n_frames, 1)):
            raise DatasetError(
                f"{where}: {keys['E']}: expected shape ({n_frames},) or ({n_frames}, 1), got {E.shape}"
            )
        E = E.reshape(n_frames)
        _check_finite(E, where, keys["E"])

    if z is not None:
        z = _atomic_numbers(z, n_atoms, where, keys["z"], n_frames)
    return R, F, E, z


def checked_hessians(H, H_frames, n_frames, n_atoms, where, keys=None):
    """Validate Hessians; return (H (K, 3N, 3N), H_frames (K,) ascending), symmetrised, or (None, None).

    H: (K, 3N, 3N) or (K, N, 3, N, 3). H_frames: the frames the K Hessians
    belong to; without it K must be the number of frames. `keys` maps 'H',
    'H_frames' to the caller's names, as in `checked_arrays`.
    """
    keys = {"H": "H", "H_frames": "H_frames", **(keys or {})}
    if H is None:
        if H_frames is not None:
            raise DatasetError(f"{where}: {keys['H_frames']} is given but there are no Hessians ({keys['H']})")
        return None, None
    H = _hessian_matrices(_float_array(H, where, keys["H"]), n_atoms, where, keys["H"])
    frames = _hessian_frames(H_frames, len(H), n_frames, where, keys)
    order = np.argsort(frames, kind="stable")
    H, frames = H[order], frames[order]
    _check_hessians_finite(H, frames, where, keys["H"])
    return _symmetrised(H, frames, where, keys["H"]), frames


def _hessian_matrices(H, n_atoms, where, key):
    """H as (K, 3N, 3N), from that shape or (K, N, 3, N, 3)."""
    n3 = 3 * n_atoms
    if H.shape[1:] == (n_atoms, 3, n_atoms, 3):
        H = H.reshape(len(H), n3, n3)
    if H.ndim != 3 or H.shape[1:] != (n3, n3):
        raise DatasetError(
            f"{where}: {key}: expected shape (K, {n3}, {n3}) or (K, {n_atoms}, 3, {n_atoms}, 3) "
            f"(one 3N x 3N Hessian per frame, N = {n_atoms} atoms), got {H.shape}"
        )
    if len(H) == 0:
        raise DatasetError(f"{where}: {key}: holds no Hessians (shape {H.shape}); leave it out instead")
    return H


def _hessian_frames(H_frames, n_hessians, n_frames, where, keys):
    """The frame of each Hessian: H_frames checked, or every frame when it is absent."""
    if H_frames is None:
        if n_hessians != n_frames:
            raise DatasetError(
                f"{where}: {keys['H']}: {n_hessians} Hessians for {n_frames} frames; give one per frame, "
                f"or the frames that have one in {keys['H_frames']}"
            )
        return np.arange(n_frames)
    frames = np.asarray(H_frames)
    if frames.dtype.kind not in "iu":
        raise DatasetError(f"{where}: {keys['H_frames']}: expected integer frame indices, got dtype {frames.dtype}")
    if frames.shape != (n_hessians,):
        raise DatasetError(
            f"{where}: {keys['H_frames']}: expected shape ({n_hessians},) (one frame per Hessian in "
            f"{keys['H']}), got {frames.shape}"
        )
    outside = (frames < 0) | (frames >= n_frames)
    if outside.any():
        entry = int(np.argmax(outside))
        raise DatasetError(
            f"{where}: {keys['H_frames']}: entry {entry} is frame {frames[entry]}, but there are "
            f"{n_frames} frames (0..{n_frames - 1})"
        )
    values, counts = np.unique(frames, return_counts=True)
    if (counts > 1).any():
        frame = values[np.argmax(counts > 1)]
        entries = np.flatnonzero(frames == frame)[:2].tolist()
        raise DatasetError(f"{where}: {keys['H_frames']}: frame {frame} has two Hessians (entries {entries})")
    return frames.astype(np.int64)


def _coordinate(index):
    """'atom 2 y' for row/column 7 of a 3N x 3N Hessian."""
    return f"atom {index // 3} {'xyz'[index % 3]}"


def _check_hessians_finite(H, frames, where, key):
    bad = ~np.isfinite(H)
    if bad.any():
        k, i, j = np.unravel_index(np.argmax(bad), bad.shape)
        raise DatasetError(
            f"{where}: {key}: frame {frames[k]}, entry ({i}, {j}) ({_coordinate(i)}, {_coordinate(j)}) "
            f"is not finite ({H[k, i, j]})"
        )


def _symmetrised(H, frames, where, key):
    """(H + H^T) / 2, after refusing the first frame asymmetric beyond the stated tolerance."""
    asymmetry = np.abs(H - np.swapaxes(H, 1, 2))
    tolerance = HESSIAN_SYMMETRY_RTOL * np.abs(H).max(axis=(1, 2)) + HESSIAN_SYMMETRY_ATOL
    beyond = asymmetry > tolerance[:, None, None]
    if beyond.any():
        k, i, j = np.unravel_index(np.argmax(beyond), beyond.shape)
        raise DatasetError(
            f"{where}: {key}: frame {frames[k]} is not symmetric: entry ({i}, {j}) ({_coordinate(i)}, "
            f"{_coordinate(j)}) is {H[k, i, j]:.8g} but ({j}, {i}) is {H[k, j, i]:.8g}, a difference of "
            f"{asymmetry[k, i, j]:.3g} > {tolerance[k]:.3g} (= {HESSIAN_SYMMETRY_RTOL:g} max|H| + "
            f"{HESSIAN_SYMMETRY_ATOL:g}); if that is finite-difference noise, store (H + H^T) / 2"
        )
    return 0.5 * (H + np.swapaxes(H, 1, 2))


def _float_array(value, where, key):
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise DatasetError(f"{where}: {key}: expected real numbers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float64)


def _check_finite(array, where, key):
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    first = np.unravel_index(np.argmax(bad), bad.shape)  # argmax finds the first True
    position = f"frame {first[0]}" if array.ndim < 3 else f"frame {first[0]}, atom {first[1]}"
    raise DatasetError(f"{where}: {key}: {position} is not finite ({array[first]})")


def _atomic_numbers(z, n_atoms, where, key, n_frames=None):
    """z (N,) checked, or z (M, N) per frame with 0 for padded slots (several compositions)."""
    array = np.asarray(z)
    if array.dtype.kind not in "iuf":
        raise DatasetError(f"{where}: {key}: expected integer atomic numbers, got dtype {array.dtype}")
    if array.ndim == 2 and n_frames is not None:
        try:
            return mixed.checked_elements(array, n_frames, n_atoms, what=key)
        except ValueError as exc:
            raise DatasetError(f"{where}: {exc}") from None
    if array.shape != (n_atoms,):
        raise DatasetError(f"{where}: {key}: expected shape ({n_atoms},) (one per atom), got {array.shape}")
    values = array.astype(np.float64)
    invalid = (values != np.round(values)) | (values < 1) | (values > MAX_ATOMIC_NUMBER)
    if invalid.any():
        atom = int(np.argmax(invalid))
        raise DatasetError(
            f"{where}: {key}: atom {atom} has atomic number {array[atom]}; "
            f"expected an integer in 1..{MAX_ATOMIC_NUMBER}"
        )
    return values.astype(np.int64)


# --------------------------------------------------------------------------- loading


def load_dataset(path, labels: str = "new", require_forces: bool = True,
                 energy_key: str | None = None, forces_key: str | None = None,
                 hessian_key: str | None = None) -> Dataset:
    """Read a dataset file; the format is chosen by extension, then content.

    labels: 'new' (default) or 'old'; 'old' selects the original MD17 labels
    of an rMD17 file. Files with a single label set report labels='default'.
    require_forces=False accepts files without forces (Dataset.F is None).
    energy_key, forces_key: the extended XYZ keys holding the labels (default:
    ASE's energy/forces, else REF_energy/REF_forces).
    hessian_key: the extended XYZ info key holding each frame's Hessian
    (default: hessian, else REF_hessian).
    """
    path = Path(path)
    if labels not in LABEL_SETS:
        raise DatasetError(f"{path}: labels must be one of {LABEL_SETS}, got {labels!r}")
    if _is_xyz(path):
        return _load_xyz(path, labels, require_forces, energy_key, forces_key, hessian_key)
    if energy_key or forces_key or hessian_key:
        raise DatasetError(f"{path}: energy/forces/Hessian keys can only be chosen for extended XYZ files")
    return _load_npz(_read_npz(path), path, labels, require_forces)


def load_geometries(path):
    """(R (M, N, 3), z (N,) or None) from an xyz file or an npz with R/coords (z optional).

    For prediction: labels are not needed, and an npz holding only R gives z None."""
    path = Path(path)
    if _is_xyz(path):
        ds = _load_xyz(path, "new", require_forces=False)
        return ds.R, ds.z
    data = _read_npz(path)
    key = next((k for k in ("R", "coords") if k in data), None)
    if key is None:
        raise DatasetError(f"{path}: no geometries: expected a key R (or coords), found {sorted(data)}")
    z_key = next((k for k in ("z", "nuclear_charges") if k in data), None)
    R, _, _, z = checked_arrays(data[key], None, None, None if z_key is None else data[z_key], str(path),
                                {"R": key, "z": z_key or "z"}, require_forces=False)
    return R, z


def check_same_species(z, z_ref, where, ref="the model"):
    """DatasetError unless the atoms of an input match the reference's in number, species and order."""
    from ase.data import chemical_symbols

    z, z_ref = np.asarray(z), np.asarray(z_ref)
    if z.shape != z_ref.shape:
        raise DatasetError(f"{where}: {len(z)} atoms per geometry, but {ref} has {len(z_ref)}")
    if not np.array_equal(z, z_ref):
        atom = int(np.argmax(z != z_ref))
        raise DatasetError(
            f"{where}: atom {atom} is {chemical_symbols[int(z[atom])]} in {Path(where).name} but "
            f"{chemical_symbols[int(z_ref[atom])]} in {ref} (species and atom order must be the training data's)"
        )


def hessian_unit_label(energy_unit, length_unit):
    """The unit text of Hessians: energy per length squared, 'unknown units' when the file does not say."""
    if "unknown" in (energy_unit, length_unit):
        return "unknown units"
    return f"{energy_unit}/{length_unit}^2"


def unit_labels(energy_unit, length_unit):
    """(energy, force) unit texts; 'unknown units' when the file does not say."""
    if energy_unit == "unknown":
        return "unknown units", "unknown units"
    if length_unit == "unknown":
        return energy_unit, "unknown units"
    return energy_unit, f"{energy_unit}/{length_unit}"


def _is_xyz(path):
    """True for an extended XYZ file; raises DatasetError for missing or unreadable paths."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if path.suffix.lower() in _XYZ_SUFFIXES:
        return True
    if path.suffix.lower() == ".npz" or zipfile.is_zipfile(path):  # .npz is a zip archive
        return False
    raise DatasetError(
        f"{path}: unknown format (extension {path.suffix or 'none'!r}); "
        f"expected an .npz (sGDML or rMD17) or an {'/'.join(_XYZ_SUFFIXES)} file"
    )


def _read_npz(path):
    """Every array of an npz file, refusing pickled objects and files that are not npz archives."""
    size = path.stat().st_size
    if size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes); expected an .npz archive")
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: not an .npz file (not a zip archive, {size} bytes)")
    try:
        with np.load(path, allow_pickle=False) as npz:  # never unpickle files we are handed
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: cannot read as .npz: {exc}") from exc


def _load_npz(data, path, labels, require_forces):
    if _RMD17_KEYS <= data.keys():
        return _from_rmd17(data, path, labels, require_forces)
    if _SGDML_KEYS <= data.keys():
        return _from_sgdml(data, path, labels, require_forces)
    raise DatasetError(f"{path}: unrecognised .npz keys {sorted(data)}; expected {_EXPECTED_NPZ_KEYS}")


def _from_sgdml(data, path, labels, require_forces):
    _reject_old_labels(labels, path, f"keys {sorted(data)}")
    R, F, E, z = checked_arrays(data["R"], data.get("F"), data.get("E"), data["z"], str(path),
                                require_forces=require_forces)
    H, H_frames = checked_hessians(data.get("H"), data.get("H_frames"), *R.shape[:2], str(path))
    return Dataset(
        R=R, z=z, F=F, E=E, H=H, H_frames=H_frames,
        name=_text(data, "name", path.stem),
        theory=_text(data, "theory", "unknown"),
        energy_unit=_text(data, "e_unit", "unknown"),
        length_unit=_text(data, "r_unit", "unknown"),
        source=str(path),
        labels="default",
    )


def _from_rmd17(data, path, labels, require_forces):
    prefix = "old_" if labels == "old" else ""
    if labels == "old" and not {"old_energies", "old_forces"} & data.keys():
        _reject_old_labels(labels, path, f"keys {sorted(data)}")
    keys = {"R": "coords", "F": prefix + "forces", "E": prefix + "energies", "z": "nuclear_charges"}
    R, F, E, z = checked_arrays(
        data["coords"], data.get(keys["F"]), data.get(keys["E"]), data["nuclear_charges"], str(path), keys,
        require_forces=require_forces,
    )
    return Dataset(
        R=R, z=z, F=F, E=E,
        name=_rmd17_molecule(path.stem),
        theory=_RMD17_THEORY[labels],
        energy_unit="kcal/mol",
        length_unit="Ang",
        source=str(path),
        labels=labels,
    )


def _rmd17_molecule(stem):
    """'rmd17_ethanol_train_01' -> 'ethanol'; other names are kept whole."""
    match = re.fullmatch(r"rmd17_(.+?)(?:_(?:train|test))?(?:_\d+)?", stem)
    return match.group(1) if match else stem


def _text(data, key, default):
    """Metadata stored as a 0-d string (or bytes) array, as sGDML writes it."""
    if key not in data:
        return default
    value = data[key].item() if data[key].size == 1 else data[key]
    return value.decode() if isinstance(value, bytes) else str(value)


def _reject_old_labels(labels, path, contents):
    if labels == "old":
        raise DatasetError(f"{path}: labels='old' needs old_energies/old_forces, but the file has {contents}")


def _load_xyz(path, labels, require_forces=True, energy_key=None, forces_key=None, hessian_key=None):
    import ase.io  # ase is only needed for this format

    _reject_old_labels(labels, path, "extended XYZ frames")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes); expected extended XYZ frames")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # ase's parsers raise many unrelated types on bad input
        raise DatasetError(f"{path}: cannot read as extended XYZ: {exc}") from exc
    if not frames:
        raise DatasetError(f"{path}: no frames")
    z = _common_species([atoms.numbers for atoms in frames])
    padded = z is None  # several compositions: padded arrays (runtime/mixed.py)
    if padded:
        z = _padded([atoms.numbers for atoms in frames])
    R = _padded([atoms.positions for atoms in frames])
    f_key, F = _xyz_labels(frames, forces_key, _XYZ_FORCES_KEYS, _frame_forces, path)
    e_key, E = _xyz_labels(frames, energy_key, _XYZ_ENERGY_KEYS, _frame_energy, path)
    keys = {"R": "positions", "F": f_key, "E": e_key, "z": "numbers"}
    R, F, E, z = checked_arrays(R, F, E, z, str(path), keys, require_forces=require_forces)
    if padded:
        hessian_keys = [k for k in ([hessian_key] if hessian_key else _XYZ_HESSIAN_KEYS)
                        if any(k in atoms.info for atoms in frames)]
        if hessian_keys:
            raise DatasetError(f"{path}: Hessians ({hessian_keys[0]}) with frames of several compositions are not "
                               "supported yet")
    h_key, H, H_frames = _xyz_hessians(frames, hessian_key, R.shape[1], path)
    H, H_frames = checked_hessians(H, H_frames, *R.shape[:2], str(path), {"H": h_key})
    return Dataset(
        R=R, z=z, F=F, E=E, H=H, H_frames=H_frames,
        name=path.stem,
        theory=str(frames[0].info.get("theory", "unknown")),
        energy_unit="eV",  # ASE's units
        length_unit="Ang",
        source=str(path),
        labels="default",
    )


def _common_species(numbers):
    """The atomic numbers shared by all frames, or None if the frames' compositions differ."""
    first = numbers[0]
    if all(len(current) == len(first) and np.array_equal(current, first) for current in numbers[1:]):
        return first
    return None


def _padded(arrays) -> np.ndarray:
    """Per-frame arrays of different lengths stacked, padded with zeros to the longest."""
    out = np.zeros((len(arrays), max(len(a) for a in arrays)) + np.shape(arrays[0])[1:],
                   dtype=np.result_type(*arrays))
    for k, a in enumerate(arrays):
        out[k, :len(a)] = a
    return out


def _xyz_labels(frames, key, default_keys, read, path):
    """(key, stacked labels or None): the named key, else the first default key any frame has."""
    for candidate in [key] if key else default_keys:
        values = _per_frame([read(atoms, candidate) for atoms in frames], candidate, path)
        if values is not None:
            return candidate, values
    if key:
        raise DatasetError(f"{path}: no frame has the key {key!r}")
    return default_keys[0], None


def _xyz_hessians(frames, key, n_atoms, path):
    """(key, H (K, 3N, 3N), H_frames (K,)) from per-frame info entries, or (key, None, None).

    Unlike energies and forces, only some frames need a Hessian: the others have none."""
    for candidate in [key] if key else _XYZ_HESSIAN_KEYS:
        present = [frame for frame, atoms in enumerate(frames) if candidate in atoms.info]
        if present:
            H = [_frame_hessian(frames[frame].info[candidate], n_atoms, frame, candidate, path) for frame in present]
            return candidate, np.stack(H), np.array(present)
    if key:
        raise DatasetError(f"{path}: no frame has the key {key!r}")
    return _XYZ_HESSIAN_KEYS[0], None, None


def _frame_hessian(value, n_atoms, frame, key, path):
    """One frame's Hessian from its info entry: 9N^2 numbers (flat, as ASE writes arrays) in row order."""
    n3 = 3 * n_atoms
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" or array.size != n3 * n3:
        got = f"{array.size} values" if array.dtype.kind in "iuf" else repr(value)[:40]
        raise DatasetError(
            f"{path}: {key}: frame {frame}: expected {n3 * n3} numbers (a {n3} x {n3} Hessian, "
            f"flattened), got {got}"
        )
    return array.reshape(n3, n3)


def _frame_forces(atoms, key):
    if key == "forces" and atoms.calc is not None:
        try:
            return atoms.get_forces(apply_constraint=False)  # the labels, not constrained forces
        except RuntimeError:  # includes PropertyNotImplementedError: no forces stored
            pass
    return atoms.arrays.get(key)


def _frame_energy(atoms, key):
    if key == "energy" and atoms.calc is not None:
        try:
            return atoms.get_potential_energy()
        except RuntimeError:
            pass
    return atoms.info.get(key)  # checked_arrays refuses values that are not numbers


def _per_frame(values, what, path):
    """Stack one value per frame; None if no frame has one, an error if only some do."""
    missing = [frame for frame, value in enumerate(values) if value is None]
    if len(missing) == len(values):
        return None
    if missing:
        present = next(frame for frame, value in enumerate(values) if value is not None)
        raise DatasetError(f"{path}: {what}: frame {missing[0]} has no {what} but frame {present} has")
    if len({np.shape(v) for v in values}) > 1:  # per-atom values of frames of several compositions
        return _padded(values)
    return np.stack(values)


# --------------------------------------------------------------------------- consistency

_PAIR_POOL = 1000  # frames searched for neighbours: bounds time and memory on large sets
_DISTANCE_FEATURES = 256  # interatomic distances used to find neighbouring frames
_CLOSEST_FRACTION = 0.1  # the trapezoid error grows with the cube of the step: use short steps
_MIN_FRAMES = 100  # on sparser sets (rMD17 subsets) the nearest frames are too far apart
_MIN_CORRELATION = 0.5
_SCALE_RANGE = (0.5, 2.0)


def check_force_energy_consistency(R, E, F) -> list[str]:
    """Warnings when energies and forces do not look like E and -dE/dR.

    For pairs of nearby frames i, j the energy change E_j - E_i should equal
    the work -0.5 (F_i + F_j) . (R_j - R_i) (trapezoid rule). Pairs are
    consecutive frames and each frame with its nearest neighbour, the
    shortest steps kept; frame j is rotated onto frame i first so that a
    rigid rotation between frames does not count as a step. A least-squares
    factor a with E_j - E_i ~ a * work is then near 1 for consistent data,
    near -1 for gradients stored as forces, and far from 1 for mixed units.
    Returns [] without energies or with fewer than 100 frames, where the
    check is not reliable.
    """
    if E is None:
        return []
    R, F, E, _ = checked_arrays(R, F, E, None, "consistency check")
    if len(R) < _MIN_FRAMES:
        return []
    i, j = _nearby_pairs(R, np.random.default_rng(0)).T
    step, F_j = _aligned_steps(R, F, i, j)
    work = -0.5 * np.einsum("pak,pak->p", F[i] + F_j, step)
    return _scale_warnings(work, E[j] - E[i])


def _nearby_pairs(R, rng):
    """Frame pairs (P, 2) with the shortest steps among consecutive frames and nearest neighbours."""
    n_frames = len(R)
    pool = np.sort(rng.choice(n_frames, size=min(n_frames, _PAIR_POOL), replace=False))
    consecutive = pool[pool + 1 < n_frames]
    features = _distance_features(R[pool], rng)
    sq = np.sum(features**2, axis=1)
    dist2 = sq[:, None] + sq[None, :] - 2.0 * features @ features.T
    np.fill_diagonal(dist2, np.inf)
    candidates = np.concatenate([
        np.stack([consecutive, consecutive + 1], axis=1),
        np.stack([pool, pool[np.argmin(dist2, axis=1)]], axis=1),
    ])
    pairs = np.unique(np.sort(candidates, axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]  # a frame can be its own neighbour when it is duplicated
    step, _ = _aligned_steps(R, R, pairs[:, 0], pairs[:, 1])
    length = np.linalg.norm(step.reshape(len(pairs), -1), axis=1)
    return pairs[np.argsort(length)[: int(_CLOSEST_FRACTION * len(pairs))]]


def _distance_features(R, rng):
    """Rotation-invariant frame features: (a sample of) the interatomic distances."""
    a, b = np.triu_indices(R.shape[1], k=1)
    if len(a) > _DISTANCE_FEATURES:
        pick = rng.choice(len(a), size=_DISTANCE_FEATURES, replace=False)
        a, b = a[pick], b[pick]
    return np.linalg.norm(R[:, a] - R[:, b], axis=-1)


def _aligned_steps(R, F, i, j):
    """Displacements from frame i to frame j, and F_j, after rotating frame j onto frame i."""
    P = R[i] - R[i].mean(axis=1, keepdims=True)
    Q = R[j] - R[j].mean(axis=1, keepdims=True)
    rotation = _kabsch(P, Q)
    return Q @ rotation - P, F[j] @ rotation


def _kabsch(P, Q):
    """Rotations (K, 3, 3) with Q @ rotation ~ P for centred frames P, Q (K, N, 3)."""
    U, _, Vt = np.linalg.svd(np.swapaxes(Q, 1, 2) @ P)
    U[:, :, -1] *= np.sign(np.linalg.det(U @ Vt))[:, None]  # a proper rotation, not a reflection
    return U @ Vt


def _scale_warnings(work, dE):
    ww, ee, we = work @ work, dE @ dE, work @ dE
    if ww == 0 and ee == 0:
        return []  # nothing changes between the frames: no evidence either way
    correlation = we / np.sqrt(ww * ee) if ww and ee else 0.0
    n = len(dE)
    if abs(correlation) < _MIN_CORRELATION:
        return [
            f"energy differences between nearby frames do not follow the forces (correlation "
            f"{correlation:.2f} over {n} frame pairs): energies and forces may be misaligned, "
            f"from different methods, or very noisy"
        ]
    scale = we / ww
    warnings = []
    if scale < 0:
        warnings.append(
            f"forces look like energy gradients (+dE/dR) rather than forces (-dE/dR): energy "
            f"differences match the force work with factor {scale:.3g} over {n} frame pairs; "
            f"flip the sign of F"
        )
    if not _SCALE_RANGE[0] <= abs(scale) <= _SCALE_RANGE[1]:
        warnings.append(
            f"energies and forces look like different units: energy differences are {scale:.3g} "
            f"times the force work over {n} frame pairs (expected 1); check the energy and "
            f"length units of E and F (eV vs kcal/mol is a factor 23.06)"
        )
    return warnings
