"""Generated modules and Numba's on-disk cache: built once, reused across
processes, rebuilt when the DSL source changes, safe under concurrent builds."""
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import compiler
from compiler.build import cache

DSL_TEMPLATE = '''\
"""A small descriptor for the cache tests."""
from compiler.dsl import descriptor, norm


@descriptor(over="pairs")
def scaled_inverse(ri, rj):
    r = norm(ri - rj)
    return {scale} / r
'''
DECORATOR_LINE, RETURN_LINE = 5, 8
R = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 1.5]])


def expected_values(scale):
    i, j = np.triu_indices(len(R), 1)
    return scale / np.linalg.norm(R[i] - R[j], axis=1)


def write_dsl(path, scale):
    path.write_text(DSL_TEMPLATE.format(scale=scale))
    assert path.read_text().splitlines()[DECORATOR_LINE - 1].startswith("@descriptor")
    assert path.read_text().splitlines()[RETURN_LINE - 1].strip().startswith("return")


SUBPROCESS = textwrap.dedent('''
    import hashlib, json, sys
    import numpy as np
    import compiler
    d = compiler.compile_descriptor(sys.argv[1] + ":scaled_inverse")
    out = {"built_now": d.built_now, "path": str(d.module_path),
           "sha": hashlib.sha256(d.module_path.read_bytes()).hexdigest()}
    if sys.argv[2] == "call":
        R = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 1.5]])
        out["values"] = d.values(R).tolist()
        stats = d.module.descriptor_many.stats
        out["hits"] = sum(stats.cache_hits.values())
        out["misses"] = sum(stats.cache_misses.values())
    print(json.dumps(out))
''')


def run_subprocess(dsl_path, gen_dir, mode):
    return subprocess.Popen([sys.executable, "-c", SUBPROCESS, str(dsl_path), mode],
                            env={**os.environ, cache.ENV_VAR: str(gen_dir)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def gen_dir(tmp_path, monkeypatch):
    path = tmp_path / "generated"
    monkeypatch.setenv(cache.ENV_VAR, str(path))
    return path


def test_build_reuse_and_rebuild(tmp_path, gen_dir):
    dsl = tmp_path / "cache_dsl.py"
    write_dsl(dsl, 2.0)
    spec = f"{dsl}:scaled_inverse"

    first = compiler.compile_descriptor(spec)
    assert first.built_now
    assert first.module_path.parent == gen_dir and first.module_path.is_file()
    assert first.module_path.name.startswith("descriptor_scaled_inverse_")
    text = first.module_path.read_text()
    assert f"{dsl}:{DECORATOR_LINE}" in text   # the quoted DSL source, with its place
    assert f"{dsl}:{RETURN_LINE}" in text      # the return statement the code came from
    assert np.allclose(first.values(R), expected_values(2.0), rtol=1e-14)

    again = compiler.compile_descriptor(spec)
    assert not again.built_now and again.module_path == first.module_path

    # Numba wrote its cache next to the generated module ...
    pycache = gen_dir / "__pycache__"
    stem = first.module_path.stem
    assert list(pycache.glob(f"{stem}.descriptor_many-*.nbi"))
    assert list(pycache.glob(f"{stem}.descriptor_many-*.nbc"))
    assert list(pycache.glob(f"{stem}.site_term-*.nbi"))
    # ... and a new process reuses both the module and the machine code.
    out = result(run_subprocess(dsl, gen_dir, "call"))
    assert out["built_now"] is False and out["path"] == str(first.module_path)
    assert out["hits"] >= 1 and out["misses"] == 0
    assert np.allclose(out["values"], expected_values(2.0), rtol=1e-14)

    # Changing the DSL source (a constant in the body) gives a new module.
    write_dsl(dsl, 3.25)
    changed = compiler.compile_descriptor(spec)
    assert changed.built_now
    assert changed.module_path != first.module_path and changed.module_path.is_file()
    assert first.module_path.is_file()  # the old entry stays valid for its own source
    assert np.allclose(changed.values(R), expected_values(3.25), rtol=1e-14)


def test_concurrent_builds_of_the_same_entry(tmp_path, gen_dir):
    dsl = tmp_path / "race_dsl.py"
    write_dsl(dsl, 1.75)
    procs = [run_subprocess(dsl, gen_dir, "build") for _ in range(2)]
    outs = [result(p) for p in procs]
    assert outs[0]["path"] == outs[1]["path"]
    assert any(o["built_now"] for o in outs)
    path = gen_dir / os.path.basename(outs[0]["path"])
    text = path.read_bytes()
    # each process saw a complete file, and the one left is the same text
    assert outs[0]["sha"] == outs[1]["sha"] == hashlib.sha256(text).hexdigest()
    assert not list(gen_dir.glob(".*.tmp"))  # no temporary files left behind
    module = compiler.compile_descriptor(f"{dsl}:scaled_inverse")
    assert not module.built_now
    compile(text, str(path), "exec")
    assert np.allclose(module.values(R), expected_values(1.75), rtol=1e-14)


def test_module_level_constant_change_rebuilds(tmp_path, gen_dir):
    dsl = tmp_path / "const_dsl.py"
    template = textwrap.dedent('''\
        from compiler.dsl import descriptor, norm
        SCALE = {scale}


        @descriptor(over="pairs")
        def scaled_inverse(ri, rj):
            return SCALE / norm(ri - rj)
        ''')
    dsl.write_text(template.format(scale="2.0"))
    first = compiler.compile_descriptor(f"{dsl}:scaled_inverse")
    dsl.write_text(template.format(scale="3.25"))
    changed = compiler.compile_descriptor(f"{dsl}:scaled_inverse")
    assert changed.module_path != first.module_path
    assert np.allclose(changed.values(R), expected_values(3.25), rtol=1e-14)


@pytest.mark.parametrize("damage", ["empty", "cut in half", "no metadata"])
def test_damaged_generated_module_is_rebuilt(tmp_path, gen_dir, damage):
    dsl = tmp_path / "damaged_dsl.py"
    write_dsl(dsl, 1.25)
    first = compiler.compile_descriptor(f"{dsl}:scaled_inverse")
    text = first.module_path.read_text()
    first.module_path.write_text({"empty": "", "cut in half": text[: len(text) // 2],
                                  "no metadata": text.replace("METADATA = ", "_METADATA = ")}[damage])
    out = result(run_subprocess(dsl, gen_dir, "call"))  # a new process finds the damaged file
    assert out["built_now"] is True and out["path"] == str(first.module_path)
    assert first.module_path.read_text() == text
    assert np.allclose(out["values"], expected_values(1.25), rtol=1e-14)


def test_generated_modules_are_0644(tmp_path, gen_dir):
    dsl = tmp_path / "mode_dsl.py"
    write_dsl(dsl, 0.5)
    module = compiler.compile_descriptor(f"{dsl}:scaled_inverse")
    assert module.module_path.stat().st_mode & 0o777 == 0o644


def test_unusable_generated_dir_falls_back_to_the_user_cache(tmp_path, monkeypatch, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv(cache.ENV_VAR, str(not_a_folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.generated_dir() == tmp_path / "xdg" / "gdmlc" / "generated"
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and cache.ENV_VAR in warning[0] and str(not_a_folder) in warning[0]


def test_no_usable_generated_dir_is_a_clear_error(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv(cache.ENV_VAR, str(not_a_folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_folder))
    with pytest.raises(compiler.errors.CompileError,
                       match=f"no writable folder for generated modules: {cache.ENV_VAR}={not_a_folder}"):
        cache.generated_dir()
