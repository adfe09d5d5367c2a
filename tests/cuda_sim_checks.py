"""CUDA kernels vs the CPU kernels, run under Numba's CUDA simulator.

Run by tests/test_cuda_sim.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the
simulator must be chosen before numba.cuda is first imported, and the other
tests must not see it).  Prints one JSON object on its last line: for every
check the max relative difference (max |cuda - cpu| / max |cpu|), plus facts
the test asserts on (generated file, error messages).

The simulator runs one Python thread per CUDA thread, so molecules have 4-5
atoms and a few geometries.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from compiler.dsl import combine, descriptor, dot, exp, kernel, norm, sqdist, where  # noqa: E402
from numeric import rel  # noqa: E402
from runtime.prediction import predict_parts  # noqa: E402


@descriptor(over="neighbours", params={"eta": [0.5, 2.0]})
def two_channel_density(ri, rj, eta):
    """A neighbour-summed descriptor with two channels (radial_g2 has 8: too slow here)."""
    return exp(-eta * norm(ri - rj))


@descriptor(over="neighbour_pairs", params={"eta": [0.5, 1.0]}, elements=[1, 6, 8], cutoff=2.5)
def angular_blocks(ri, rj, rk, eta):
    """Three-body terms in element-pair blocks, skipped beyond the cutoff (some are, at these sizes)."""
    rij = norm(rj - ri)
    rik = norm(rk - ri)
    cutoff = where(rij < 2.5, (1.0 - rij / 2.5) ** 2, 0.0) * where(rik < 2.5, (1.0 - rik / 2.5) ** 2, 0.0)
    return dot(rj - ri, rk - ri) * exp(-eta * (rij + rik)) * cutoff


@kernel
def gaussian_times_polynomial(d, dp, sigma):
    """Uses both s and t, so every rank-one term (g_ss, g_st, g_tt) is present."""
    return exp(-sqdist(d, dp) / (2.0 * sigma ** 2)) * (1.0 + dot(d, dp) / sigma ** 2) ** 2


# (descriptor, kernel, hyperparameters): every rank-one term of the kernel Hessian and
# both descriptor layouts (pairs, neighbours) appear at least once
COMBINATIONS = [
    ("inverse_distances", "matern52", {"sigma": 1.3}),                    # g_s, g_ss
    ("coulomb_matrix", "polynomial", {"sigma": 3.0}),                     # z-dependent; g_t, g_tt
    (angular_blocks, "matern52", {"sigma": 0.8}),                         # three-body, element blocks, cutoff
    (two_channel_density, gaussian_times_polynomial, {"sigma": 1.1}),     # all five coefficients (last: its
]                                                                         # generated file is inspected)
Z = np.array([6, 8, 1, 1, 1])


def geometries(rng, m, n):
    """m random distortions of one random n-atom geometry with atoms >= 0.9 apart."""
    while True:
        base = rng.uniform(-1.5, 1.5, size=(n, 3))
        dist = np.linalg.norm(base[:, None] - base[None], axis=-1) + 10 * np.eye(n)
        if dist.min() > 0.9:
            return base + rng.normal(scale=0.1, size=(m, n, 3))


def kernel_checks(out):
    from compiler.build.cuda_compiled import compile_cuda_model
    from runtime.assembly import interleaved_rows

    rng = np.random.default_rng(5)
    for index, (dname, kname, hyper_values) in enumerate(COMBINATIONS):
        cm = compile_cuda_model(dname, kname)
        name = f"{cm.descriptor.name} x {cm.kernel.name}"
        n = 4 if index % 2 == 0 else 5
        m = 3
        z = Z[:n]
        R = geometries(rng, m, n)
        h = cm.kernel.hyper(**hyper_values)
        D, JAC, _ = cm.evaluate(R, z)
        Dc, JACc, _ = cm.cpu.descriptor.evaluate(R, z)
        out[f"{name}: descriptor"] = rel(D, Dc)
        out[f"{name}: jacobian"] = rel(JAC, JACc)

        swap = np.arange(n)
        swap[[n - 2, n - 1]] = [n - 1, n - 2]  # exchange the last two (hydrogen) atoms
        for label, perms in (("no permutations", None), ("2 permutations", np.stack([np.arange(n), swap]))):
            fperms = cm.feature_permutations(perms, n)
            K = cm.assemble(D, JAC, fperms, h, n).copy_to_host()
            Kc = np.zeros_like(K)
            cm.cpu.assemble_rows(Dc, JACc, fperms, h, Kc, interleaved_rows(m), n, mirror=True)
            upper = np.kron(np.triu(np.ones((m, m), bool)), np.ones((3 * n, 3 * n), bool))
            out[f"{name}: assembly, {label}"] = rel(K[upper], Kc[upper])

            V = rng.normal(size=(m, n, 3))
            out[f"{name}: matrix-free product, {label}"] = rel(
                cm.matvec(D, JAC, fperms, h, V), (Kc @ V.ravel()).reshape(m, n, 3))

            B = cm.cpu.contract(JACc, V)
            out[f"{name}: contraction, {label}"] = rel(cm.contract(JAC, V).copy_to_host(), B)
            f = Dc.shape[1]
            DT = Dc[:, fperms].reshape(-1, f)
            BT = B[:, fperms].reshape(-1, f)
            Q = geometries(rng, 2, n)
            DQ, JQ, _ = cm.evaluate(Q, z)
            E, F = cm.predict_parts(DQ, JQ, DT, BT, h, n)
            DQc, JQc, _ = cm.cpu.descriptor.evaluate(Q, z)
            Ec, Fc = predict_parts(cm.cpu, DQc, JQc, DT, BT, h, n)
            out[f"{name}: prediction energies, {label}"] = rel(E, Ec)
            out[f"{name}: prediction forces, {label}"] = rel(F, Fc)
    try:  # feature permutations of the wrong length would make the kernel read out of bounds
        cm.assemble(D, JAC, np.zeros((1, 3), np.int64), h, n)
        out["assemble_shape_error"] = "no error"
    except ValueError as exc:
        out["assemble_shape_error"] = str(exc)
    out["generated_file"] = str(cm.module_path)
    out["cpu_generated_file"] = str(cm.cpu.module_path)
    out["simulated"] = cm.simulated


def model_checks(out):
    """GDML(device="cuda") against GDML(device="cpu"), training and prediction."""
    import runtime

    rng = np.random.default_rng(11)
    n, m = 4, 4
    z = Z[:n]
    R = geometries(rng, m + 3, n)
    F = rng.normal(size=R.shape)
    E = rng.normal(size=len(R))
    perms = np.array([[0, 1, 2, 3], [0, 1, 3, 2]])
    # lam = 1e-4: inverse distances make the matrix singular (rigid motions); a larger lam
    # keeps the comparison about the kernels, not about the conditioning
    models = {device: runtime.GDML("inverse_distances", "matern52", sigma=[1.0, 2.0], lam=1e-4,
                                   symmetries=perms, progress=False, device=device)
              for device in ("cpu", "cuda")}
    out["model_device"] = models["cuda"].device
    for model in models.values():
        model.fit(R[:m], F[:m], E[:m], z, valid=(R[m:], F[m:], E[m:]))
    out["chosen_sigma"] = [models["cuda"].sigma, models["cpu"].sigma]
    out["GDML: alpha"] = rel(models["cuda"].alpha, models["cpu"].alpha)
    Eg, Fg = models["cuda"].predict(R[m:])
    Ec, Fc = models["cpu"].predict(R[m:])
    out["GDML: predicted energies"] = rel(Eg, Ec)
    out["GDML: predicted forces"] = rel(Fg, Fc)
    out["GDML: energy constant"] = rel(models["cuda"].energy_constant, models["cpu"].energy_constant)

    # a combination of descriptors: its features come from the parts' CPU kernels, the rest runs on the device
    both = combine(two_channel_density, angular_blocks, name="density_angular")
    combined = {device: runtime.GDML(both, "matern52", sigma=1.5, lam=1e-4, symmetries=perms, progress=False, local=False,
                                     device=device) for device in ("cpu", "cuda")}
    for model in combined.values():
        model.fit(R[:m], F[:m], E[:m], z)
    (Eg2, Fg2), (Ec2, Fc2) = combined["cuda"].predict(R[m:]), combined["cpu"].predict(R[m:])
    out["combination: predicted energies"] = rel(Eg2, Ec2)
    out["combination: predicted forces"] = rel(Fg2, Fc2)

    # the command line: a saved model loaded and predicting with --device cuda
    import tempfile

    from runtime.cli import main as gdmlc
    with tempfile.TemporaryDirectory() as tmp:
        models["cpu"].save(f"{tmp}/model.npz")
        np.savez(f"{tmp}/geometries.npz", R=R[m:])
        code = gdmlc(["predict", f"{tmp}/model.npz", f"{tmp}/geometries.npz", "--device", "cuda",
                      "-o", f"{tmp}/out.npz"])
        with np.load(f"{tmp}/out.npz") as result:
            out["cli: predicted energies"] = rel(result["E"], Ec) if code == 0 else float("inf")
            out["cli: predicted forces"] = rel(result["F"], Fc) if code == 0 else float("inf")
    # bad input fails on the host with the CPU path's message, before any launch
    bad = R[m:].copy()
    bad[0, 1, 2] = np.nan
    try:
        models["cuda"].predict(bad)
        out["nan_error"] = "no error"
    except ValueError as exc:
        out["nan_error"] = str(exc)
    try:
        models["cuda"].backend.matvec(np.zeros((2, 6)), np.zeros((2, 6, 2, 3)), np.zeros((1, 6), np.int64),
                                      models["cuda"].kernel_hyper, np.zeros(7))
        out["matvec_shape_error"] = "no error"
    except ValueError as exc:
        out["matvec_shape_error"] = str(exc)


def main():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        raise SystemExit("run with NUMBA_ENABLE_CUDASIM=1")
    # The simulator's block manager polls its threads for syncthreads(): a short GIL switch
    # interval makes a tree reduction take milliseconds instead of tens of milliseconds.
    sys.setswitchinterval(2e-5)
    out = {}
    kernel_checks(out)
    model_checks(out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
