"""The sums of compiler/build/hessian.py against plain numpy: the rank-one terms
sum_m c_uw[m] u_m w_m^T (halved as S + S^T when mirrored coefficients are equal, else one
product per left vector) and the generated project_rows in both memory layouts against the
dense Jacobian assembled from the sparse one."""
import numpy as np
import pytest

from compiler.build.hessian import ColumnLayout, _rank_one_sum
from numeric import rel

MP, F = 50, 7


def basis_columns(rng):
    """Random basis vectors as columns over MP training points (d: one column), like _Basis."""
    return {"delta": rng.normal(size=(F, MP)), "beta": rng.normal(size=(F, MP)), "dp": rng.normal(size=(F, MP)),
            "d": rng.normal(size=(F, 1))}


def numpy_rank_one_sum(columns, CT, columns_named):
    """sum over terms k = (u, w) and training points m of CT[k, m] u_m w_m^T, term by term."""
    total = np.zeros((F, F))
    for k, name in enumerate(columns_named):
        kind, what = name.split(":")
        if kind != "hessian" or what == "identity":
            continue
        u, w = what.split(",")
        U = np.broadcast_to(columns[u], (F, MP))
        W = np.broadcast_to(columns[w], (F, MP))
        total += np.einsum("m,fm,gm->fg", CT[k], U, W)
    return total


LAYOUTS = {
    "matern52": ["gradient:delta", "gradient:beta", "hessian:identity", "hessian:delta,delta", "hessian:delta,beta",
                 "hessian:beta,delta"],
    "polynomial": ["gradient:dp", "gradient:beta", "hessian:dp,dp", "hessian:dp,beta", "hessian:beta,dp"],
    "with d": ["hessian:d,beta", "hessian:beta,d", "hessian:d,d", "hessian:delta,d", "hessian:d,delta"],
}


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("mirrors_equal", [True, False])
def test_rank_one_sum_matches_numpy(name, mirrors_equal):
    rng = np.random.default_rng(3)
    columns_named = LAYOUTS[name]
    layout = ColumnLayout.of(columns_named)
    CT = rng.normal(size=(len(columns_named), MP))
    for a, b in layout.mirrored:
        CT[b] = CT[a] if mirrors_equal else CT[a] + 0.5
    assert layout.mirrored_coefficients_equal(CT) == mirrors_equal  # the halved path, or the general one
    columns = basis_columns(rng)
    total = _rank_one_sum(layout, CT, columns, F)
    assert rel(total, numpy_rank_one_sum(columns, CT, columns_named)) <= 1e-13


def test_a_term_without_its_mirror_is_summed_in_full():
    rng = np.random.default_rng(4)
    columns_named = ["hessian:delta,delta", "hessian:delta,beta"]
    layout = ColumnLayout.of(columns_named)
    assert layout.mirrored is None
    CT = rng.normal(size=(2, MP))
    columns = basis_columns(rng)
    assert rel(_rank_one_sum(layout, CT, columns, F), numpy_rank_one_sum(columns, CT, columns_named)) <= 1e-13


@pytest.mark.parametrize("descriptor", ["inverse_distances", "radial_g2"])
def test_project_rows_matches_the_dense_jacobian_in_both_layouts(descriptor):
    """X = B J (rows w -> J^T w) with J (F, 3N) assembled from the sparse Jacobian by numpy;
    the Hessian passes column-major transposes, the other callers row-major arrays."""
    from compiler import compile_model
    from runtime.data import DEFAULT_DATA

    data = np.load(DEFAULT_DATA)
    R, z = data["R"][7], data["z"]
    model = compile_model(descriptor, "gaussian")
    D, JAC, _ = model.descriptor.evaluate(R, z)
    n, n_features = len(z), D.shape[1]
    atoms = model.descriptor.atom_table(n)
    J = np.zeros((n_features, n, 3))
    for f in range(n_features):
        for k in range(atoms.shape[1]):
            J[f, atoms[f, k]] += JAC[0, f, k]
    J = J.reshape(n_features, 3 * n)
    rows = 1100  # more than one tile of training points
    B = np.random.default_rng(5).normal(size=(rows, n_features))
    X_rows = np.empty((rows, 3 * n))
    model.module.project_rows(B, JAC[0], atoms, X_rows)
    BT = np.ascontiguousarray(B.T)
    XT = np.empty((3 * n, rows))
    model.module.project_rows(BT.T, JAC[0], atoms, XT.T)
    assert rel(X_rows, B @ J) <= 1e-14
    np.testing.assert_array_equal(XT.T, X_rows)  # the same sums in the same order
