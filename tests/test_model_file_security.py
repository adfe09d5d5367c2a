"""Model files are data: loading never runs stored code or writes outside the cache, every
array is checked, a checksum refuses modified files, and saves are atomic.

Every hostile case carries a payload that would create a marker file if any of it ran;
each test asserts the marker is absent and that nothing was written to the (empty)
cache folder or anywhere else in the test's folder.
"""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import runtime
from compiler.build import cache
from runtime import model_file
from runtime.model_file import ModelFileError

DATA = Path(runtime.__file__).resolve().parent / "default_data" / "ethanol_gfn2xtb_500K.npz"
DESCRIPTORS = Path(runtime.__file__).resolve().parents[1] / "descriptors"
TRAIN = np.linspace(5, 2995, 8).astype(int)
SIGMA = 10.0
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ds():
    return runtime.load_dataset(DATA)


@pytest.fixture(scope="module")
def model(ds):
    """Library descriptor with names in its decorator (radial_g2), energies as constraints."""
    return runtime.GDML("radial_g2", "matern52", sigma=SIGMA, progress=False, energy_constraints=True, local=False).fit(
        ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("saved") / "model.npz"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def stored(saved):
    with np.load(saved) as f:
        return {k: f[k] for k in f.files}


def random_geometries(ds, count=5, seed=0):
    rng = np.random.default_rng(seed)
    frames = ds.R[rng.choice(len(ds.R), count, replace=False)]
    return frames + rng.normal(scale=0.02, size=frames.shape)


# --------------------------------------------------------------------------- round trips

def test_round_trip_library_descriptor_predicts_identically(ds, model, saved):
    loaded = runtime.GDML.load(saved)
    R = random_geometries(ds)
    E0, F0 = model.predict(R)
    E1, F1 = loaded.predict(R)
    assert np.array_equal(E0, E1) and np.array_equal(F0, F1)
    assert loaded.descriptor_dsl.stored is not None and loaded.kernel_dsl.stored is not None
    assert loaded.descriptor_dsl.params == {k: (list(v) if isinstance(v, list) else v)
                                           for k, v in model.descriptor_dsl.params.items()}
    # the same cache entry: the restored function has the same cache key as the original
    assert loaded.model.descriptor.module_path == model.model.descriptor.module_path


USER_DSL = '''\
from compiler.dsl import descriptor, exp, norm

SCALE = 1.7
UNUSED = 99.0


@descriptor(over="pairs", params={"r0": [1.0, 2.5]}, sigmas=[5, 10, 20])
def scaled_decay(ri, rj, r0):
    r = norm(ri - rj)
    return SCALE * exp(-r / r0) / r
'''


def test_round_trip_user_descriptor_with_a_module_constant(tmp_path, ds):
    dsl_file = tmp_path / "user_dsl.py"
    dsl_file.write_text(USER_DSL)
    model = runtime.GDML(f"{dsl_file}:scaled_decay", "matern52", sigma=SIGMA, progress=False).fit(
        ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)
    model.save(tmp_path / "m.npz")
    dsl_file.unlink()  # the model file alone must be enough: nothing is imported on load
    loaded = runtime.GDML.load(tmp_path / "m.npz")
    assert loaded.descriptor_dsl.stored.constants["SCALE"] == 1.7
    assert "UNUSED" not in loaded.descriptor_dsl.stored.constants
    assert loaded.descriptor_dsl.default_sigmas == (5.0, 10.0, 20.0)
    R = random_geometries(ds, seed=1)
    E0, F0 = model.predict(R)
    E1, F1 = loaded.predict(R)
    assert np.array_equal(E0, E1) and np.array_equal(F0, F1)


def _format1(stored, modules):
    """The format-1 layout (as the previous gdmlc wrote it): whole module texts, names, no checksum."""
    arrays = {k: v for k, v in stored.items()
              if k not in ("checksum", "descriptor_meta", "kernel_meta", "descriptor_source", "kernel_source")}
    arrays["format_version"] = np.array(1)
    for kind, (name, text) in modules.items():
        arrays[f"{kind}_name"], arrays[f"{kind}_source"] = np.array(name), np.array(text)
    return arrays


def test_format1_file_is_read_through_the_safe_path(tmp_path, ds, model, stored):
    arrays = _format1(stored, {"descriptor": ("radial_g2", (DESCRIPTORS / "radial_g2.py").read_text()),
                               "kernel": ("matern52", (DESCRIPTORS / "matern52.py").read_text())})
    np.savez(tmp_path / "v1.npz", **arrays)
    loaded = runtime.GDML.load(tmp_path / "v1.npz")
    R = random_geometries(ds, seed=2)
    E0, F0 = model.predict(R)
    E1, F1 = loaded.predict(R)
    assert np.array_equal(E0, E1) and np.array_equal(F0, F1)
    assert loaded.descriptor_dsl.params["eta"] == [4.0] * 8  # a name in the decorator, read as a literal


# --------------------------------------------------------------------------- hostile and corrupt files

def _payload(marker):
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def _meta(arrays, which):
    return json.loads(str(arrays[f"{which}_meta"]))


def _set_meta(arrays, which, **changes):
    arrays[f"{which}_meta"] = np.array(json.dumps({**_meta(arrays, which), **changes}))


def _source(arrays, kind):
    return str(arrays[f"{kind}_source"])


def _set_source(arrays, kind, text):
    arrays[f"{kind}_source"] = np.array(text)


def module_code(a, marker):
    _set_source(a, "descriptor", f"{_payload(marker)}\n{_source(a, 'descriptor')}")


def code_after_the_def(a, marker):
    _set_source(a, "kernel", f"{_source(a, 'kernel')}{_payload(marker)}\n")


def decorator_argument(a, marker):
    text = _source(a, "descriptor")
    _set_source(a, "descriptor", text.replace('over="neighbours"', f'over={_payload(marker)}', 1))


def decorator_itself(a, marker):
    text = _source(a, "kernel")
    _set_source(a, "kernel", text.replace("@kernel", f"@{_payload(marker)}", 1))


def default_value(a, marker):
    text = _source(a, "kernel")
    _set_source(a, "kernel", text.replace("sigma):", f"sigma={_payload(marker)}):", 1))


def annotation(a, marker):
    text = _source(a, "kernel")
    _set_source(a, "kernel", text.replace("sigma):", f"sigma: {_payload(marker)}):", 1))


def body_code(a, marker):
    text = _source(a, "kernel")
    lines = text.splitlines(keepends=True)
    at = next(k for k, line in enumerate(lines) if line.strip().startswith("r ="))
    lines.insert(at, f"    x = {_payload(marker)}\n")
    _set_source(a, "kernel", "".join(lines))


def name_relative_path(a, marker):
    _set_meta(a, "descriptor", name="../../x/radial_g2")


def name_absolute_path(a, marker):
    _set_meta(a, "descriptor", name=str(marker.parent / "x" / "radial_g2"))


def name_keyword(a, marker):
    _set_meta(a, "kernel", name="lambda")


def kernel_as_descriptor(a, marker):
    _set_source(a, "descriptor", _source(a, "kernel"))
    _set_meta(a, "descriptor", name="matern52")


def wrong_kind_in_meta(a, marker):
    _set_meta(a, "kernel", kind="descriptor")


def unknown_index_space(a, marker):
    _set_meta(a, "descriptor", over="triples")


def non_finite_parameter(a, marker):
    params = _meta(a, "descriptor")["params"]
    _set_meta(a, "descriptor", params={**params, "rc": float("nan")})


def non_numeric_constant(a, marker):
    _set_meta(a, "descriptor", constants={"pi": _payload(marker)})


def control_characters(a, marker):
    _set_source(a, "kernel", _source(a, "kernel").replace("\n", "\r", 1))


def missing_alpha(a, marker):
    del a["alpha"]


def missing_descriptor_meta(a, marker):
    del a["descriptor_meta"]


def alpha_wrong_shape(a, marker):
    a["alpha"] = a["alpha"].reshape(len(a["alpha"]), -1)


def R_train_wrong_atoms(a, marker):
    a["R_train"] = a["R_train"][:, :-1]


def perms_not_a_permutation(a, marker):
    a["perms"] = a["perms"].copy()
    a["perms"][-1, 0] = a["perms"][-1, 1]


def perms_mix_species(a, marker):
    p = np.arange(a["z"].size)
    p[[0, -1]] = p[[-1, 0]]  # ethanol: C and H
    a["perms"] = np.vstack([a["perms"], p])


def D_train_wrong_features(a, marker):
    a["D_train"] = a["D_train"][:, :-1]


def energy_weights_wrong_length(a, marker):
    a["energy_weights"] = a["energy_weights"][:-1]


def alpha_as_integers(a, marker):
    a["alpha"] = a["alpha"].astype(np.int64)


def nan_in_alpha(a, marker):
    a["alpha"] = a["alpha"].copy()
    a["alpha"][0, 0, 0] = np.nan


def inf_in_R_train(a, marker):
    a["R_train"] = a["R_train"].copy()
    a["R_train"][1, 2, 0] = np.inf


def zero_sigma(a, marker):
    a["sigma"] = np.array(0.0)


def negative_lam(a, marker):
    a["lam"] = np.array(-1e-10)


def z_out_of_range(a, marker):
    a["z"] = a["z"] + 200


def newer_format(a, marker):
    a["format_version"] = np.array(3)


def info_not_json(a, marker):
    a["info"] = np.array(_payload(marker))


# (case, mutation, expected message, recompute the checksum so the structural check is what refuses)
HOSTILE = [
    ("module-level code", module_code, "exactly one function definition", True),
    ("code after the def", code_after_the_def, "exactly one function definition", True),
    ("code in a decorator argument", decorator_argument, "code in its decorator", True),
    ("code as the decorator", decorator_itself, "decorated @__import__", True),
    ("code in a default value", default_value, "not pure DSL.*defaults must be numbers", True),
    ("code in an annotation", annotation, "code in its decorator or annotations", True),
    ("__import__ in the body", body_code, "not pure DSL", True),
    ("name ../../x/name", name_relative_path, "not a Python identifier", True),
    ("name /abs/x/name", name_absolute_path, "not a Python identifier", True),
    ("name is a keyword", name_keyword, "not a Python identifier", True),
    ("kernel stored as the descriptor", kernel_as_descriptor, "decorated @kernel, not @descriptor", True),
    ("kind in metadata", wrong_kind_in_meta, "marked as a 'descriptor', not a kernel", True),
    ("unknown index space", unknown_index_space, "index space 'triples'", True),
    ("NaN parameter", non_finite_parameter, "parameter rc of radial_g2 must be finite", True),
    ("code as a constant", non_numeric_constant, "constant pi of radial_g2 must be a number", True),
    ("a carriage return in the source", control_characters, "not plain DSL text", True),
    ("missing alpha", missing_alpha, "missing 'alpha'", False),
    ("missing descriptor metadata", missing_descriptor_meta, "missing 'descriptor_meta'", False),
    ("alpha of the wrong shape", alpha_wrong_shape, "'alpha' has dtype float64 and shape", True),
    ("R_train with an atom less", R_train_wrong_atoms, "'R_train' has dtype float64 and shape", True),
    ("a row of perms not a permutation", perms_not_a_permutation, "'perms' row 5 is not a permutation", True),
    ("perms mixing species", perms_mix_species, "'perms' row 6 is not a permutation", True),
    ("D_train with a feature less", D_train_wrong_features, "'D_train' has .* features per geometry", True),
    ("energy_weights of the wrong length", energy_weights_wrong_length, "'energy_weights' has dtype", True),
    ("integer alpha", alpha_as_integers, "'alpha' has dtype int64", True),
    ("NaN in alpha", nan_in_alpha, "'alpha' contains non-finite values", True),
    ("inf in R_train", inf_in_R_train, "'R_train' contains non-finite values", True),
    ("sigma zero", zero_sigma, "'sigma' must be a finite positive number", True),
    ("negative lambda", negative_lam, "'lam' must be a finite non-negative number", True),
    ("z out of range", z_out_of_range, "atomic numbers in 1..118", True),
    ("a newer format", newer_format, "model format 3 is not one this gdmlc reads", True),
    ("info not JSON", info_not_json, "'info' is not valid JSON", True),
    ("edited alpha", lambda a, m: a.update(alpha=a["alpha"] * 1.01), "modified or corrupt", False),
    ("swapped descriptor source", lambda a, m: _set_source(a, "descriptor", _source(a, "descriptor").replace(
        "0.5 * (cos", "0.4 * (cos")), "modified or corrupt", False),
]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """An empty cache folder, a marker path, and a check that nothing ran or was written."""
    cache_dir = tmp_path / "a" / "b" / "cache"
    cache_dir.mkdir(parents=True)
    monkeypatch.setenv(cache.ENV_VAR, str(cache_dir))
    marker = tmp_path / "a" / "b" / "marker"
    yield marker
    assert not marker.exists(), "stored code ran"
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["model.npz"], f"files written while loading: {written}"


@pytest.mark.parametrize("case, mutate, message, rechecksum", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_model_file_is_refused(sandbox, tmp_path, stored, case, mutate, message, rechecksum):
    arrays = dict(stored)
    mutate(arrays, sandbox)
    if rechecksum:
        arrays["checksum"] = np.array(model_file.checksum(arrays))
    path = tmp_path / "model.npz"
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match=message) as err:
        runtime.GDML.load(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def _pickled(path, stored):
    np.savez(path, **{**stored, "info": np.array([{"x": 1}], dtype=object)})


@pytest.mark.parametrize("case, write, message", [
    ("truncated", lambda p, s, b: p.write_bytes(b[: len(b) // 2]), "not a readable npz model file"),
    ("zero bytes", lambda p, s, b: p.write_bytes(b""), "not a readable npz model file"),
    ("not a zip", lambda p, s, b: p.write_bytes(b"#!/bin/sh\n" * 100), "not a readable npz model file"),
    ("an object array", lambda p, s, b: _pickled(p, s), "pickled Python objects"),
    ("a single npy array", lambda p, s, b: p.write_bytes(_npy_bytes()), "not an npz archive"),
], ids=["truncated", "zero bytes", "not a zip", "object array", "npy"])
def test_corrupt_model_file_is_refused(sandbox, tmp_path, stored, saved, case, write, message):
    path = tmp_path / "model.npz"
    write(path, stored, saved.read_bytes())
    with pytest.raises(ModelFileError, match=message):
        runtime.GDML.load(path)


def _npy_bytes():
    import io
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


FORMAT1_PAYLOADS = {
    "module-level call": "{payload}\n",
    "module-level function call in an assignment": "X = {payload}\n",
    "code in a decorator argument": None,  # the decorator is rewritten below
}


@pytest.mark.parametrize("case", sorted(FORMAT1_PAYLOADS))
def test_hostile_format1_module_is_refused(sandbox, tmp_path, stored, case):
    text = (DESCRIPTORS / "radial_g2.py").read_text()
    if FORMAT1_PAYLOADS[case] is None:
        text = text.replace("sigmas=[", f"sigmas=[{_payload(sandbox)}, ", 1)
    else:
        text += FORMAT1_PAYLOADS[case].format(payload=_payload(sandbox))
    arrays = _format1(stored, {"descriptor": ("radial_g2", text),
                               "kernel": ("matern52", (DESCRIPTORS / "matern52.py").read_text())})
    path = tmp_path / "model.npz"
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match="retrain"):
        runtime.GDML.load(path)


def test_stored_file_name_cannot_reach_generated_code(stored):
    """A stored file name is quoted in generated comments and docstrings: quotes and line breaks go."""
    meta = {**_meta(stored, "kernel"), "filename": 'x"""\nimport os; os.system("id")\n#'}
    dsl = model_file.restore_function("kernel", _source(stored, "kernel"), meta)
    assert "\n" not in dsl.filename and '"' not in dsl.filename
    with pytest.raises(TypeError, match="read from a model file"):
        dsl(np.zeros(3), np.ones(3), 1.0)  # a restored function is compiled, never called


def test_computed_decorator_arguments_are_stored_as_data(tmp_path, ds):
    """A decorator that computes its arguments (list(...), np.linspace(...)) is stored as a bare @descriptor
    plus the values it gave: the model saves, loads without running anything, and predicts the same."""
    dsl_file = tmp_path / "calls.py"
    dsl_file.write_text(USER_DSL.replace('@descriptor(over="pairs", params={"r0": [1.0, 2.5]}, sigmas=[5, 10, 20])',
                                         '@descriptor(over="pairs",\n            params={"r0": list((1.0, 2.5))},'
                                         '\n            sigmas=[5, 10, 20])'))
    model = runtime.GDML(f"{dsl_file}:scaled_decay", "matern52", sigma=SIGMA, progress=False).fit(
        ds.R[TRAIN[:3]], ds.F[TRAIN[:3]], ds.E[TRAIN[:3]], ds.z)
    model.save(tmp_path / "m.npz")
    dsl_file.unlink()
    loaded = runtime.GDML.load(tmp_path / "m.npz")
    assert loaded.descriptor_dsl.params == {"r0": [1.0, 2.5]}
    stored_lines = loaded.descriptor_dsl.source.splitlines()
    assert stored_lines[0].startswith("@descriptor") and "list(" not in loaded.descriptor_dsl.source
    assert stored_lines[3].lstrip().startswith("def scaled_decay")  # same line numbers as the user's file
    R = random_geometries(ds, seed=2)
    E0, F0 = model.predict(R)
    E1, F1 = loaded.predict(R)
    assert np.array_equal(E0, E1) and np.array_equal(F0, F1)


# --------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("command", ["info", "predict"])
def test_cli_on_a_hostile_model_file(tmp_path, stored, command):
    marker = tmp_path / "marker"
    arrays = dict(stored)
    module_code(arrays, marker)
    arrays["checksum"] = np.array(model_file.checksum(arrays))
    path = tmp_path / "hostile.npz"
    np.savez(path, **arrays)
    geometries = tmp_path / "g.npz"
    np.savez(geometries, R=stored["R_train"][:2], z=stored["z"])
    argv = [str(path)] + ([str(geometries)] if command == "predict" else [])
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", command, *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(path) in lines[0] and "exactly one function definition" in lines[0]
    assert not marker.exists()


# --------------------------------------------------------------------------- atomic saves

SAVE_LOOP = textwrap.dedent('''
    import sys
    import runtime
    model = runtime.GDML.load(sys.argv[1])
    model.info["padding"] = "x" * 4_000_000  # a large file: a kill lands mid-write
    print("ready", flush=True)
    while True:
        model.save(sys.argv[2])
''')


def test_killed_save_leaves_the_previous_model_intact(tmp_path, saved, ds):
    target = tmp_path / "model.npz"
    target.write_bytes(saved.read_bytes())
    reference = runtime.GDML.load(saved).predict(ds.R[:2])
    rng = random.Random(0)
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(saved), str(target)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        kills += proc.returncode == -signal.SIGKILL
        E, F = runtime.GDML.load(target).predict(ds.R[:2])
        assert np.array_equal(E, reference[0]) and np.array_equal(F, reference[1])
    assert kills == 6


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, model, monkeypatch):
    target = tmp_path / "model.npz"
    target.write_bytes(b"the previous model")

    def failing_savez(fh, **arrays):
        fh.write(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_file.np, "savez", failing_savez)
    with pytest.raises(OSError, match="No space left"):
        model.save(target)
    assert target.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_save_into_a_missing_folder_fails_before_writing(tmp_path, model):
    with pytest.raises(FileNotFoundError):
        model.save(tmp_path / "missing" / "model.npz")
    assert list(tmp_path.iterdir()) == []


def test_saved_model_file_is_0644(tmp_path, model):
    model.save(tmp_path / "m.npz")
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o644
