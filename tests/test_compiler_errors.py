"""Unsupported DSL constructs and bad input fail early, with messages that
point at the cause (file, line and construct; frame, atom and shape)."""
import re

import numpy as np
import pytest

import compiler
from compiler import DSLError

# function in tests/dsl_samples/bad_descriptors.py -> a phrase the message must contain
DESCRIPTOR_CASES = {
    "for_loop": "loops are not allowed",
    "while_loop": "loops are not allowed",
    "if_statement": "if statements are not allowed",
    "attribute_call": "np.sqrt",
    "attribute_access": "attribute access",
    "subscript": "indexing is not allowed",
    "unknown_call": "unknown function 'softplus'",
    "recursion": "recursive call to 'recursion'",
    "global_statement": "global statements are not allowed",
    "missing_return": "has no return statement",
    "code_after_return": "code after return",
    "tuple_unpacking": "unpacking",
    "and_or": "and/or are not supported",
    "chained_comparison": "chained comparisons",
    "comparison_as_number": "a comparison can only be the condition of where()",
    "vector_return": "the returned value must be a scalar, but it is a vector",
    "lambda_expression": "Lambda is not allowed",
    "string_constant": "constant 'angstrom' is not a number",
    "parameter_without_value": "argument 'width' has no value",
    "nested_definition": "nested definitions are not allowed",
}
KERNEL_CASES = {
    "norm_of_d": "unsupported reduction norm(d)",
    "vector_arithmetic": "descriptor vectors may only be combined as d - dp",
    "self_dot": "unsupported reduction dot(d, d)",
}


def marked_line(path, function):
    """1-based line of the `# <- error` marker inside ``function`` (the def line counts)."""
    lines = path.read_text().splitlines()
    start = next(k for k, text in enumerate(lines) if re.match(rf"def {function}\(", text))
    for k in range(start, len(lines)):
        if k > start and lines[k].startswith(("def ", "@")):
            break
        if "# <- error" in lines[k]:
            return k + 1
    raise AssertionError(f"no error marker in {function}")


def check_error(excinfo, path, line, phrase):
    err = excinfo.value
    text = str(err)
    assert f"{path}:{line}:" in text, text          # file:line: at the front, as compilers do
    assert err.lineno == line and err.filename == str(path)
    assert phrase in text, text
    col = int(text.split(f"{path}:{line}:")[1].split(":")[0])
    assert col >= 1


@pytest.mark.parametrize("function", list(DESCRIPTOR_CASES))
def test_unsupported_descriptor_construct(dsl_samples, function):
    path = (dsl_samples / "bad_descriptors.py").resolve()
    with pytest.raises(DSLError) as excinfo:
        compiler.compile_descriptor(f"{path}:{function}")
    check_error(excinfo, path, marked_line(path, function), DESCRIPTOR_CASES[function])


@pytest.mark.parametrize("function", list(KERNEL_CASES))
def test_unsupported_kernel_construct(dsl_samples, function):
    path = (dsl_samples / "bad_kernels.py").resolve()
    with pytest.raises(DSLError) as excinfo:
        compiler.compile_kernel(f"{path}:{function}")
    check_error(excinfo, path, marked_line(path, function), KERNEL_CASES[function])


def test_error_column_points_at_the_construct(dsl_samples):
    path = (dsl_samples / "bad_descriptors.py").resolve()
    with pytest.raises(DSLError) as excinfo:
        compiler.compile_descriptor(f"{path}:subscript")
    line = marked_line(path, "subscript")
    col = path.read_text().splitlines()[line - 1].index("ri[0]") + 1
    assert f"{path}:{line}:{col}:" in str(excinfo.value)


def test_dsl_error_is_raised_before_anything_is_generated(dsl_samples, tmp_path, monkeypatch):
    monkeypatch.setenv("GDMLC_GENERATED_DIR", str(tmp_path))
    with pytest.raises(DSLError):
        compiler.compile_descriptor(f"{dsl_samples / 'bad_descriptors.py'}:for_loop")
    assert list(tmp_path.iterdir()) == []


def test_missing_function_in_file(dsl_samples):
    with pytest.raises(ValueError, match="defines no DSL function 'nope'"):
        compiler.compile_descriptor(f"{dsl_samples / 'bad_descriptors.py'}:nope")


# --------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def model():
    return compiler.compile_model("inverse_distances", "matern52")


@pytest.fixture(scope="module")
def coulomb():
    return compiler.compile_model("coulomb_matrix", "matern52")


def frames(m=3, n=5, seed=0):
    rng = np.random.default_rng(seed)
    grid = 1.5 * np.array([(a, b, c) for a in range(3) for b in range(3) for c in range(3)], float)
    return np.stack([grid[rng.choice(27, n, replace=False)] + rng.uniform(-0.3, 0.3, (n, 3))
                     for _ in range(m)])


def test_nan_coordinate_names_frame_and_atom(model):
    R = frames()
    R[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"frame 1, atom 2 has a non-finite coordinate"):
        model.descriptor.values(R)
    R = frames()
    R[2, 4, 1] = np.inf
    with pytest.raises(ValueError, match=r"frame 2, atom 4"):
        model.descriptor.jacobian(R)


def test_coincident_atoms_name_frame_and_atoms(model):
    R = frames()
    R[2, 3] = R[2, 1] + 1e-9
    with pytest.raises(ValueError, match=r"frame 2: atoms 1 and 3 are .* apart"):
        model.descriptor.values(R)
    # a single geometry is frame 0
    with pytest.raises(ValueError, match=r"frame 0: atoms 1 and 3"):
        model.descriptor.values(R[2])
    # 1e-8 apart or more is accepted
    R[2, 3] = R[2, 1] + np.array([2e-8, 0.0, 0.0])
    assert np.all(np.isfinite(model.descriptor.values(R)))


@pytest.mark.parametrize("shape", [(5, 2), (5,), (2, 2, 5, 3), (3, 5, 4)])
def test_wrong_geometry_shape_names_expected_and_received(model, shape):
    with pytest.raises(ValueError) as excinfo:
        model.descriptor.values(np.ones(shape))
    text = str(excinfo.value)
    assert "expected shape (n_atoms, 3) or (n_frames, n_atoms, 3)" in text and f"got {shape}" in text


def test_wrong_force_block_shapes(model):
    x = frames(1)[0]
    with pytest.raises(ValueError, match=re.escape("xp: expected one geometry of shape (n_atoms, 3), got (5, 2)")):
        model.force_block(x, x[:, :2], sigma=1.0)
    with pytest.raises(ValueError, match=re.escape("x: expected one geometry of shape (n_atoms, 3), got (1, 5, 3)")):
        model.force_block(x[None], x, sigma=1.0)


def test_wrong_kernel_vector_shapes(model):
    with pytest.raises(ValueError, match=re.escape("got (10,) and (9,)")):
        model.kernel.value(np.ones(10), np.ones(9), sigma=1.0)
    with pytest.raises(ValueError, match="entry .* is not finite"):
        model.kernel.gradient(np.array([1.0, np.nan]), np.ones(2), sigma=1.0)


def test_bad_permutations(model):
    x = frames(1)[0]
    with pytest.raises(ValueError, match=re.escape("perms: expected shape (n_perms, 5), got (1, 4)")):
        model.force_block(x, x + 1.0, perms=[[0, 1, 2, 3]], sigma=1.0)
    with pytest.raises(ValueError, match=r"row 1 is not a permutation of 0..4"):
        model.force_block(x, x + 1.0, perms=[[0, 1, 2, 3, 4], [0, 1, 2, 3, 3]], sigma=1.0)


def test_coulomb_matrix_needs_z(coulomb):
    x = frames(1)[0]
    with pytest.raises(ValueError, match=r"coulomb_matrix uses atomic numbers .*pass z"):
        coulomb.descriptor.values(x)
    with pytest.raises(ValueError, match=r"coulomb_matrix uses atomic numbers"):
        coulomb.force_block(x, x + 1.0, sigma=30.0)
    with pytest.raises(ValueError, match=re.escape("z: expected shape (5,) (one atomic number per atom), got (4,)")):
        coulomb.descriptor.values(x, z=[6, 6, 8, 1])
    with pytest.raises(ValueError, match="atomic numbers must be positive"):
        coulomb.descriptor.values(x, z=[6, 6, 8, 1, 0])


def test_hyperparameter_errors(model):
    x = frames(1)[0]
    with pytest.raises(ValueError, match=r"no hyperparameter\(s\) \['gamma'\]; it takes sigma"):
        model.force_block(x, x + 1.0, sigma=1.0, gamma=2.0)
    with pytest.raises(ValueError, match="needs hyperparameter 'sigma'"):
        model.force_block(x, x + 1.0)
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="sigma must be a positive finite number"):
            model.force_block(x, x + 1.0, sigma=bad)
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        model.kernel.value(np.ones(3), np.zeros(3), sigma=-2.0)


def test_unknown_library_names():
    with pytest.raises(ValueError, match="unknown descriptor 'inverse_distance': library descriptors are"):
        compiler.compile_descriptor("inverse_distance")
    with pytest.raises(ValueError, match="unknown kernel 'matern': library kernels are"):
        compiler.compile_kernel("matern")
    with pytest.raises(ValueError, match="unknown kernel"):
        compiler.compile_model("inverse_distances", "rbf")
    with pytest.raises(TypeError, match="is a kernel, not a descriptor"):
        from descriptors.gaussian import gaussian
        compiler.compile_descriptor(gaussian)


def test_permutations_refused_for_asymmetric_descriptor(dsl_samples, tmp_path, monkeypatch):
    monkeypatch.setenv("GDMLC_GENERATED_DIR", str(tmp_path))
    desc = compiler.compile_descriptor(f"{dsl_samples / 'asymmetric.py'}:charge_of_first")
    assert desc.symmetric is False
    assert desc.feature_permutations(None, 3).tolist() == [[0, 1, 2]]
    with pytest.raises(ValueError, match="not symmetric in its two atoms"):
        desc.feature_permutations([[0, 1, 2], [1, 0, 2]], 3)
