"""A user's mistakes on the command line: one line `gdmlc: error: ...` naming the file or option,
exit code 2, no traceback, nothing written.  Most cases run in-process (runtime.cli.main), a few in
a subprocess to prove that no traceback reaches the terminal."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import GDML, load_dataset
from runtime.cli import main
from runtime.data import DEFAULT_DATA

REPO = Path(__file__).resolve().parents[1]
KERNEL_FILE = '''from compiler.dsl import kernel, exp, sqdist

@kernel
def gauss(d, dp, sigma):
    return exp(-sqdist(d, dp) / sigma)
'''
LOOP_FILE = '''from compiler.dsl import descriptor, norm

@descriptor(over="pairs")
def looping(ri, rj):
    for k in range(2):
        pass
    return 1.0 / norm(ri - rj)
'''
FAST = ["--n-train", "5", "--n-valid", "0", "--n-test", "5", "--sigma", "20"]


@pytest.fixture(scope="module")
def ethanol():
    return load_dataset(DEFAULT_DATA)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, ethanol):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    GDML(sigma=20.0, progress=False).fit(ethanol.R[:5], ethanol.F[:5], ethanol.E[:5], ethanol.z).save(path)
    return path


def _write_npz(path, **arrays):
    with open(path, "wb") as fh:  # exact file name (np.savez would append .npz)
        np.savez(fh, **arrays)


def _ethanol_npz(path, ethanol, R=None, z=None):
    _write_npz(path, R=ethanol.R[:20] if R is None else R, z=ethanol.z if z is None else z,
               F=ethanol.F[:20], E=ethanol.E[:20])


def _coincident_frame(path, ethanol, frame):
    R = ethanol.R[:20].copy()
    R[frame, 1] = R[frame, 0]
    _ethanol_npz(path, ethanol, R=R)


def _garbage_model(path):
    _write_npz(path, format=np.array("gdmlc-model"), format_version=np.array(2))


# name -> (argv with {tmp} and {model} placeholders, files to create, text stderr must contain)
CASES = {
    "zero-byte npz": (["train", "{tmp}/empty.npz"], {"empty.npz": b""}, "empty.npz"),
    "garbage npz": (["train", "{tmp}/junk.npz"], {"junk.npz": b"\x00garbage" * 20}, "junk.npz"),
    "zero-byte xyz": (["train", "{tmp}/empty.xyz"], {"empty.xyz": b""}, "empty.xyz"),
    "garbage xyz": (["train", "{tmp}/junk.xyz"], {"junk.xyz": b"3\nno\nC x y z\n"}, "junk.xyz"),
    "npz without R": (["train", "{tmp}/noR.npz"], {"noR.npz": lambda p, ds: _write_npz(p, foo=np.ones(3))},
                      "noR.npz"),
    "missing dataset": (["train", "{tmp}/missing.npz"], {}, "missing.npz"),
    "sigma zero step": (["train", "--sigma", "10:20:0"], {}, "--sigma"),
    "sigma not a number": (["train", "--sigma", "abc"], {}, "--sigma"),
    "sigma negative": (["train", "--sigma", "-1"], {}, "--sigma"),
    "sigma list with zero": (["train", "--sigma", "10,0"], {}, "--sigma"),
    "n-valid negative": (["train", "--n-valid", "-5"], {}, "--n-valid"),
    "n-test negative": (["train", "--n-test", "-1"], {}, "--n-test"),
    "n-train zero": (["train", "--n-train", "0"], {}, "--n-train"),
    "split larger than data": (["train", "--n-train", "5000", "--sigma", "20"], {}, "3000 frames"),
    "missing DSL file": (["train", "--kernel", "{tmp}/nowhere.py:k"], {}, "nowhere.py"),
    "library kernel as descriptor": (["train", "--descriptor", "matern52"], {}, "--descriptor matern52"),
    "library descriptor as kernel": (["train", "--kernel", "inverse_distances"], {}, "--kernel inverse_distances"),
    "file kernel as descriptor": (["train", "--descriptor", "{tmp}/k.py:gauss"], {"k.py": KERNEL_FILE},
                                  "--descriptor"),
    "unknown library name": (["train", "--descriptor", "nope"], {}, "'nope'"),
    "DSL file that fails on import": (["train", "--kernel", "{tmp}/broken.py:k"],
                                      {"broken.py": "x = undefined_name\n"}, "broken.py"),
    "DSL error": (["train", "--descriptor", "{tmp}/loop.py:looping", *FAST], {"loop.py": LOOP_FILE}, "loop.py:5"),
    "hyper without value": (["train", "--hyper", "alpha"], {}, "--hyper"),
    "hyper not a number": (["train", "--hyper", "alpha=x"], {}, "--hyper"),
    "output folder missing": (["train", "-o", "{tmp}/no/such/folder/m.npz"], {}, "no/such/folder"),
    "output onto the dataset": (["train", "{tmp}/d.npz", "-o", "{tmp}/d.npz"], {"d.npz": _ethanol_npz}, "d.npz"),
    "output is a folder": (["train", "-o", "{tmp}"], {}, "-o"),
    "test file is the training file": (["train", "{tmp}/d.npz", "--test", "{tmp}/d.npz"],
                                       {"d.npz": _ethanol_npz}, "--test"),
    "coincident atoms in test file": (["train", "--test", "{tmp}/bad.npz", *FAST[:2], "--sigma", "20"],
                                      {"bad.npz": lambda p, ds: _coincident_frame(p, ds, 13)}, "frame 13"),
    "coincident atoms in training file": (["train", "{tmp}/bad.npz", "--n-train", "19", "--n-valid", "0",
                                           "--n-test", "1", "--sigma", "20"],
                                          {"bad.npz": lambda p, ds: _coincident_frame(p, ds, 7)}, "frame 7"),
    "test file with other species": (["train", "--test", "{tmp}/swapped.npz", *FAST[:2], "--sigma", "20"],
                                     {"swapped.npz": lambda p, ds: _ethanol_npz(p, ds, z=ds.z[::-1])},
                                     "atom 0 is H"),
    "unknown option": (["train", "--frobnicate"], {}, "--frobnicate"),
    "garbage model for test": (["test", "{tmp}/junk.npz", str(DEFAULT_DATA)], {"junk.npz": b"junk"}, "junk.npz"),
    "missing model for predict": (["predict", "{tmp}/none.npz", "{tmp}/g.npz"], {}, "none.npz"),
    "broken model for info": (["info", "{tmp}/broken.npz"], {"broken.npz": lambda p, ds: _garbage_model(p)},
                              "model"),  # the model's own error (the dataset loader never says "model")
    "predict: other species": (["predict", "{model}", "{tmp}/h_first.xyz"],
                               {"h_first.xyz": lambda p, ds: _xyz(p, ds, order=np.argsort(ds.z, kind="stable"))},
                               "atom 0 is H in h_first.xyz but C in the model"),
    "predict: wrong atom count": (["predict", "{model}", "{tmp}/three.npz"],
                                  {"three.npz": lambda p, ds: _write_npz(p, R=ds.R[:2, :3], z=ds.z[:3])},
                                  "3 atoms"),
    "test: other species": (["test", "{model}", "{tmp}/swapped.npz"],
                            {"swapped.npz": lambda p, ds: _ethanol_npz(p, ds, z=ds.z[::-1])}, "atom 0 is H"),
    "test: n zero": (["test", "{model}", str(DEFAULT_DATA), "--n", "0"], {}, "--n"),
    "plot: unknown format": (["test", "{model}", str(DEFAULT_DATA), "--plot", "{tmp}/p.xyzzy"], {}, ".xyzzy"),
    "predict -o missing folder": (["predict", "{model}", "{tmp}/g.npz", "-o", "{tmp}/no/out.npz"],
                                  {"g.npz": _ethanol_npz}, "no/out.npz"),
    "predict -o onto the input": (["predict", "{model}", "{tmp}/g.npz", "-o", "{tmp}/g.npz"],
                                  {"g.npz": _ethanol_npz}, "g.npz"),
}


def _xyz(path, ethanol, order):
    import ase.io
    from ase import Atoms
    ase.io.write(path, [Atoms(numbers=ethanol.z[order], positions=ethanol.R[k][order]) for k in range(3)],
                 format="extxyz")


def _make_files(tmp_path, files, ethanol):
    for name, content in files.items():
        path = tmp_path / name
        if callable(content):
            content(path, ethanol)
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)


def _argv(argv, tmp_path, model):
    return [a.replace("{tmp}", str(tmp_path)).replace("{model}", str(model)) for a in argv]


def _assert_one_error_line(err, needle):
    lines = [line for line in err.splitlines() if line.startswith("gdmlc: error:")]
    assert len(lines) == 1, err
    assert needle in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(CASES))
def test_mistake_is_one_line_and_exit_2(case, tmp_path, capsys, ethanol, model_file):
    argv, files, needle = CASES[case]
    _make_files(tmp_path, files, ethanol)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert main(_argv(argv, tmp_path, model_file)) == 2
    _assert_one_error_line(capsys.readouterr().err, needle.replace("{tmp}", str(tmp_path)))
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # inputs unchanged, nothing written (no model, no temporary file)


def _run(args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.parametrize("case", ["garbage npz", "sigma not a number", "library kernel as descriptor",
                                  "broken model for info"])
def test_no_traceback_reaches_the_terminal(case, tmp_path, ethanol):
    argv, files, needle = CASES[case]
    _make_files(tmp_path, files, ethanol)
    done = _run(_argv(argv, tmp_path, "unused"))
    assert done.returncode == 2, done.stderr
    _assert_one_error_line(done.stderr, needle)


def test_unusable_cache_folder_is_one_line_or_a_fallback(tmp_path, ethanol):
    """GDMLC_GENERATED_DIR naming a file: the cache falls back (exit 0) or says so in one line."""
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("")
    (tmp_path / "k.py").write_text(KERNEL_FILE)
    done = _run(["compile", str(tmp_path / "k.py")], env={"GDMLC_GENERATED_DIR": str(not_a_folder)})
    assert "Traceback" not in done.stderr
    if done.returncode == 0:
        assert "kernel gauss" in done.stdout and not_a_folder.read_text() == ""
    else:
        assert done.returncode == 2
        _assert_one_error_line(done.stderr, "GDMLC_GENERATED_DIR" if "GDMLC" in done.stderr else str(not_a_folder))


def test_output_into_a_folder_without_write_permission(tmp_path, capsys):
    """Checked before training: root ignores permission bits, so /proc stands in for it there."""
    if os.geteuid() == 0:
        if not Path("/proc").is_dir():
            pytest.skip("running as root without /proc: no folder this test can make unwritable")
        folder = Path("/proc")
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    assert main(["train", "-o", str(folder / "m.npz")]) == 2
    _assert_one_error_line(capsys.readouterr().err, str(folder))


def test_a_bug_keeps_its_traceback_and_exits_1(monkeypatch, capsys):
    """Unexpected exception types are not dressed up as user errors."""
    import runtime.cli as cli
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: {}["boom"])
    assert main(["info", str(DEFAULT_DATA)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "bug in gdmlc" in err
