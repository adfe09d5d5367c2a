"""The build pipeline (compiler/build/pipeline.py) and the targets behind one interface:
parsing and analysis once per DSL function, one module for every parameter table of a
descriptor, targets that implement the Target protocol, and the layering of the packages."""
import ast
import dataclasses
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler.build import cache, pipeline
from compiler.build.cuda_compiled import compile_cuda_model
from compiler.errors import DSLError
from compiler.library import resolve
from compiler.middle.primitives import PRIMITIVES
from compiler.targets import jax_reference, numba_cpu, numba_cuda
from compiler.targets.base import Target

COMPILER = Path(compiler.__file__).resolve().parent
R = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.7, 0.2], [0.4, 0.6, 1.3]])


@pytest.fixture
def gen_dir(tmp_path, monkeypatch):
    path = tmp_path / "generated"
    monkeypatch.setenv(cache.ENV_VAR, str(path))
    return path


@pytest.fixture
def fresh_memo(monkeypatch):
    monkeypatch.setattr(pipeline, "_PARSED", OrderedDict())


def exponential_decay_reference(r0_values):
    """exp(-r_ij / r0) for pairs i < j (row-major), one channel per r0: the closed form."""
    i, j = np.triu_indices(len(R), 1)
    r = np.linalg.norm(R[i] - R[j], axis=1)
    return np.exp(-r[:, None] / np.asarray(r0_values)[None, :]).ravel()


def test_descriptors_differing_only_in_params_share_a_module(gen_dir):
    """The generated code reads parameters at run time, so the table is not in the cache key:
    one module, and each descriptor computes with its own parameters."""
    library = resolve("exponential_decay", "descriptor")
    channels = dataclasses.replace(library, params={"r0": [0.5, 2.0, 3.5]})
    first = compiler.compile_descriptor(library)
    second = compiler.compile_descriptor(channels)
    assert first.built_now and not second.built_now
    assert second.module_path == first.module_path
    for compiled, r0 in ((first, [1.0]), (second, [0.5, 2.0, 3.5])):
        values = compiled.values(R)
        assert values.shape == (6 * len(r0),)
        np.testing.assert_allclose(values, exponential_decay_reference(r0), rtol=1e-13, atol=0)
        np.testing.assert_allclose(values, np.asarray(compiled.jax_function()(R)), rtol=1e-13, atol=0)


def test_parameter_names_stay_in_the_cache_key():
    """Which arguments are parameters changes the generated text (their unpacking): a
    different set of names is a different key."""
    library = resolve("exponential_decay", "descriptor")
    renamed = dataclasses.replace(library, params={"r0": 1.0, "unused": 2.0})
    assert pipeline.source_key(library) != pipeline.source_key(renamed)
    assert pipeline.source_key(library) == pipeline.source_key(dataclasses.replace(library, params={"r0": 9.0}))


def counting(monkeypatch, name):
    """Replace pipeline.<name> by a wrapper that counts its calls."""
    calls = []
    original = getattr(pipeline, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, name, wrapper)
    return calls


def test_cpu_and_cuda_models_parse_and_analyse_once(gen_dir, fresh_memo, monkeypatch):
    """compile_cuda_model after compile_model (both modules built fresh): each DSL function is
    parsed once and analysed once; the CUDA module comes through the same pipeline."""
    counts = {name: counting(monkeypatch, name) for name in
              ("parse_descriptor", "parse_kernel", "descriptor_program", "kernel_program")}
    cpu = compiler.compile_model("inverse_distances", "gaussian")
    cuda = compile_cuda_model("inverse_distances", "gaussian")
    assert cpu.descriptor.built_now and cuda.built_now
    assert {name: len(calls) for name, calls in counts.items()} == dict.fromkeys(counts, 1)
    assert cpu.module_path.name.startswith("model_inverse_distances_gaussian_")
    assert cuda.module_path.name.startswith("cuda_model_inverse_distances_gaussian_")
    assert cuda.module.METADATA == {**cpu.module.METADATA, "target": "cuda"}
    assert cuda.descriptor.ir is cpu.descriptor.ir and cuda.kernel.ir is cpu.kernel.ir  # one parse


def test_parse_errors_are_raised_every_time(tmp_path, fresh_memo):
    """A DSL error is not remembered as a result: the second compile reports it again."""
    path = tmp_path / "bad.py"
    path.write_text("from compiler.dsl import descriptor, norm\n\n\n"
                    "@descriptor(over='pairs')\n"
                    "def looped(ri, rj):\n"
                    "    for k in range(3):\n"
                    "        pass\n"
                    "    return norm(ri - rj)\n")
    for _ in range(2):
        with pytest.raises(DSLError, match="loops are not allowed") as info:
            compiler.compile_descriptor(f"{path}:looped")
        assert f"{path}:6" in str(info.value)
    assert len(pipeline._PARSED) == 0


def test_memo_is_bounded(fresh_memo, monkeypatch):
    monkeypatch.setattr(pipeline, "MEMO_SIZE", 2)
    for name in ("inverse_distances", "coulomb_matrix", "exponential_decay"):
        pipeline.front(name, "descriptor")
    assert len(pipeline._PARSED) == 2
    parsed = pipeline.front("exponential_decay", "descriptor")[1]
    assert pipeline.front("exponential_decay", "descriptor")[1] is parsed  # the memo answers


@pytest.mark.parametrize("target, style, prefix", [(numba_cpu.TARGET, "numba", ""),
                                                    (numba_cuda.TARGET, "cuda", "cuda_")])
def test_numba_targets_implement_the_protocol(target, style, prefix):
    assert isinstance(target, Target)
    assert (target.style, target.stem_prefix) == (style, prefix)
    missing = [row.name for row in PRIMITIVES.values() if not getattr(row, target.style, None)]
    assert not missing, f"{target.name}: primitives without a {target.style} spelling: {missing}"


def test_targets_receive_one_plan(fresh_memo):
    """One plan of a pair gives both targets' modules (valid Python quoting the DSL source);
    the CUDA target refuses a plan without both halves."""
    descriptor = pipeline.front("inverse_distances", "descriptor")[1]
    kernel = pipeline.front("matern52", "kernel")[1]
    plan = pipeline.plan(descriptor, kernel)
    for target in (numba_cpu.TARGET, numba_cuda.TARGET):
        text = target.module_source(plan)
        ast.parse(text)
        assert "# DSL source: " in text and "def site_term(" in text
    with pytest.raises(ValueError, match="CUDA target compiles models"):
        numba_cuda.TARGET.module_source(pipeline.plan(descriptor=descriptor))


def imported_modules(path: Path) -> set:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_layering():
    """The pipeline's direction: front and middle never import targets or build; targets never
    import build, the parser, or another target (only base, common, spelling, numba_math)."""
    shared = {"compiler.targets.base", "compiler.targets.common", "compiler.targets.spelling",
              "compiler.targets.numba_math"}
    targets = {f"compiler.targets.{p.stem}" for p in (COMPILER / "targets").glob("*.py")} - shared
    for package in ("front", "middle"):
        for path in (COMPILER / package).glob("*.py"):
            bad = {m for m in imported_modules(path) if m.startswith(("compiler.targets", "compiler.build"))}
            assert not bad, (path.name, bad)
    for path in (COMPILER / "targets").glob("*.py"):
        imports = imported_modules(path)
        own = f"compiler.targets.{path.stem}"
        bad = {m for m in imports if m.startswith(("compiler.build", "compiler.front.parser"))}
        bad |= {m for m in imports if m.split(".")[:3] != own.split(".") and ".".join(m.split(".")[:3]) in targets}
        assert not bad, (path.name, bad)
    cuda_build = imported_modules(COMPILER / "build" / "cuda_compiled.py")
    private = {m for m in cuda_build if m.startswith("compiler.") and m.split(".")[-1].startswith("_")}
    assert not private and "compiler.front.parser" not in cuda_build, private


def test_jax_reference_reads_the_same_records(fresh_memo):
    """The reference target lowers the pipeline's parsed records (no files, no cache)."""
    dsl, parsed = pipeline.front("exponential_decay", "descriptor")
    table = pipeline.params_table(dsl, parsed.ir)
    values = np.asarray(jax_reference.descriptor_function(parsed.ir, table)(R))
    np.testing.assert_allclose(values, exponential_decay_reference([1.0]), rtol=1e-13, atol=0)
