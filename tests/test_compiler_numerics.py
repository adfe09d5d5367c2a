"""Compiler numerics: where() derivatives, `gdmlc check` on NaN, kernels 0/0 at d = dp,
descriptors that ignore positions, names that collide with generated ones, and kernels
with any hyperparameter names (or none)."""
from pathlib import Path

import numpy as np
import pytest

from compiler import compile_descriptor, compile_kernel, compile_model
from compiler.middle import ad, ir
from compiler.cli import main as compiler_cli
from compiler.errors import DSLError
from compiler.library import load_file
from compiler.build.verify import TOLERANCE, check_model, random_geometry, relative_error

from numeric import rel


SAMPLES = Path(__file__).resolve().parent / "dsl_samples"


@pytest.fixture(scope="module")
def numerics():
    return load_file(str(SAMPLES / "numerics.py"))


# ------------------------------------------------------------------ where()

def test_where_derivative_selects_the_branch_in_both_modes():
    """d/dx where(x < 1, (1 - x)**1.5, 0): the closed form on each side, never 0 * NaN."""
    x = ir.var("x")
    f = ir.make("where", ir.make("lt", x, ir.ONE), (1.0 - x) ** 1.5, ir.ZERO)
    xs = np.array([0.2, 0.7, 0.999, 1.0, 1.5, 3.0])
    closed = np.where(xs < 1, -1.5 * np.sqrt(np.clip(1 - xs, 0, None)), 0.0)
    (reverse,) = ad.grad(f, ["x"])
    (forward,) = ad.jvp([f], {"x": 1.0})
    second = ad.derivative(f, ["x", "x"])  # reverse then forward
    for expr in (reverse, forward):
        (value,) = ir.evaluate([expr], {"x": xs})
        assert np.all(np.isfinite(value))
        np.testing.assert_allclose(value, closed, rtol=1e-14, atol=0)
    (value,) = ir.evaluate([second], {"x": xs[xs != 1.0]})
    inside = xs[xs != 1.0]
    np.testing.assert_allclose(value, np.where(inside < 1, 0.75 / np.sqrt(np.abs(1 - inside)), 0.0), rtol=1e-14)


def test_where_cutoff_descriptor_jacobian_is_finite_and_exact(numerics):
    c = compile_descriptor(numerics["cutoff"])
    RC = 2.0
    # pair distances 1.0 (inside the cutoff), 3.0 and 4.0 (beyond it)
    R = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    J = c.jacobian(R)
    assert np.all(np.isfinite(c.values(R))) and np.all(np.isfinite(J))
    for f, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)]):
        r = np.linalg.norm(R[i] - R[j])
        u = (R[i] - R[j]) / r
        dfdr = -1.5 / RC * np.sqrt(1 - r / RC) if r < RC else 0.0
        np.testing.assert_allclose(J[f, i], dfdr * u, rtol=1e-14, atol=1e-300)
        np.testing.assert_allclose(J[f, j], -dfdr * u, rtol=1e-14, atol=1e-300)


def test_where_cutoff_model_matches_jax_and_check_passes(numerics, capsys):
    errors = check_model(compile_model(numerics["cutoff"], numerics["gaussian"]), n_atoms=6, trials=2)
    assert all(np.isfinite(e) and e <= TOLERANCE for e in errors.values()), errors


# ------------------------------------------------------------------ gdmlc check on NaN

def test_relative_error_does_not_drop_nan():
    assert relative_error([1.0, np.nan], [1.0, 2.0]) == np.inf
    assert relative_error([1.0, 2.0], [np.inf, 2.0]) == np.inf
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0


def test_check_fails_on_a_descriptor_that_is_nan_somewhere(dsl_samples, capsys):
    rc = compiler_cli(["check", str(dsl_samples / "numerics.py"), "--descriptor", "log_shifted",
                       "--kernel", "gaussian", "--trials", "1"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAILED" in out and "non-finite at" in out


# ------------------------------------------------------------------ kernels 0/0 at d = dp

def test_kernel_value_with_removable_singularity_is_its_limit(numerics):
    k = compile_kernel(numerics["sinc_gauss"])
    d = np.array([0.3, -1.2, 2.0])
    assert k.value(d, d, sigma=2.0) == 1.0  # lim sin(r)/r exp(-r^2) at r = 0
    dp = d + np.array([0.1, 0.0, -0.05])
    r = np.linalg.norm(d - dp) / 2.0
    assert rel(k.value(d, dp, sigma=2.0), np.sin(r) / r * np.exp(-r * r)) < 1e-14
    assert np.all(np.isfinite(k.gradient(d, d, sigma=2.0)))


def test_kernel_divergent_at_d_equal_dp_is_refused_with_its_line(numerics, dsl_samples):
    with pytest.raises(DSLError) as exc:
        compile_kernel(numerics["divergent"])
    text = str(exc.value)
    assert "numerics.py:" in text and "not finite at d = dp" in text
    assert exc.value.lineno == _line_of(dsl_samples / "numerics.py", "return exp(-r) / r")


# ------------------------------------------------------------------ descriptors without positions

@pytest.mark.parametrize("name, body", [("same_atom", "return norm(ri - ri)"), ("constant", "return 1.0"),
                                        ("charges_only", "return zi * zj")])
def test_descriptor_that_ignores_positions_is_refused(numerics, dsl_samples, name, body):
    with pytest.raises(DSLError) as exc:
        compile_descriptor(numerics[name])
    assert "does not depend on the atom positions" in str(exc.value)
    assert exc.value.lineno == _line_of(dsl_samples / "numerics.py", body)
    assert str(exc.value).startswith(f"{dsl_samples / 'numerics.py'}:{exc.value.lineno}:")


def _line_of(path, text):
    return next(k for k, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# ------------------------------------------------------------------ names colliding with generated ones

def test_parameters_named_like_generated_code_give_the_same_numbers(numerics):
    plain = compile_model(numerics["plain_names"], numerics["plain_hyper"])
    clash = compile_model(numerics["internal_names"], numerics["internal_hyper"])
    rng = np.random.default_rng(3)
    x, xp = random_geometry(rng, 5), random_geometry(rng, 5)
    np.testing.assert_array_equal(clash.descriptor.values(x), plain.descriptor.values(x))
    np.testing.assert_array_equal(clash.descriptor.jacobian(x), plain.descriptor.jacobian(x))
    block = clash.force_block(x, xp, sigma=1.5)
    np.testing.assert_array_equal(block, plain.force_block(x, xp, sigma=1.5))
    d, dp, v = (plain.descriptor.values(g) for g in (x, xp, random_geometry(rng, 5)))
    np.testing.assert_array_equal(clash.kernel.hessian_vector(d, dp, v, sigma=1.5),
                                  plain.kernel.hessian_vector(d, dp, v, sigma=1.5))
    errors = check_model(clash, n_atoms=5, trials=1)
    assert all(e <= TOLERANCE for e in errors.values()), errors


# ------------------------------------------------------------------ hyperparameters by any name, or none

@pytest.fixture(scope="module")
def ethanol():
    import runtime
    ds = runtime.load_dataset("runtime/default_data/ethanol_gfn2xtb_500K.npz")
    return ds


def _fit_predict(ethanol, kernel, **kw):
    import runtime
    model = runtime.GDML(kernel=kernel, symmetries=None, progress=False, **kw)
    model.fit(ethanol.R[:12], ethanol.F[:12], ethanol.E[:12], ethanol.z)
    return model.predict(ethanol.R[100:103])


def test_kernels_without_sigma_or_hyperparameters_train_like_the_gaussian(numerics, ethanol):
    """exp(-s / 200) three ways: no hyperparameter, sigma = 10, and ell = 10 with w = 10 by hyper=."""
    E_ref, F_ref = _fit_predict(ethanol, numerics["gaussian"], sigma=10.0)
    E0, F0 = _fit_predict(ethanol, numerics["no_hyper"])
    E2, F2 = _fit_predict(ethanol, numerics["two_scales"], sigma=10.0, hyper={"w": 10.0})
    for E, F in ((E0, F0), (E2, F2)):
        assert np.all(np.isfinite(F))
        assert rel(F, F_ref) < 1e-8 and rel(E, E_ref) < 1e-8
    _, F_other = _fit_predict(ethanol, numerics["two_scales"], sigma=10.0, hyper={"w": 5.0})
    assert rel(F_other, F_ref) > 1e-3  # hyper= reaches the kernel


def test_hyper_rejects_unknown_names_and_sigma(numerics):
    import runtime
    with pytest.raises(ValueError, match="no hyperparameter"):
        runtime.GDML(kernel=numerics["two_scales"], hyper={"nope": 1.0}, progress=False)
    with pytest.raises(ValueError, match="length scale"):
        runtime.GDML(kernel=numerics["two_scales"], hyper={"ell": 1.0}, progress=False)


def test_hyper_values_are_stored_in_the_model_file(numerics, ethanol, tmp_path):
    """A model trained with hyper= predicts the same after save/load (the values travel in the file)."""
    import runtime
    model = runtime.GDML(kernel=numerics["two_scales"], sigma=10.0, hyper={"w": 5.0}, symmetries=None,
                         progress=False).fit(ethanol.R[:12], ethanol.F[:12], ethanol.E[:12], ethanol.z)
    model.save(tmp_path / "m.npz")
    loaded = runtime.GDML.load(tmp_path / "m.npz")
    assert loaded.hyper_values == {"w": 5.0}
    E0, F0 = model.predict(ethanol.R[100:103])
    E1, F1 = loaded.predict(ethanol.R[100:103])
    np.testing.assert_array_equal(F0, F1)
    np.testing.assert_array_equal(E0, E1)
