"""Emit the readable Numba module for a descriptor, a kernel, or both.

Scalar bodies come from the simplified derivative programs; the loops around
them (sparse Jacobians, force blocks, prediction, assembly) are templates
specialised to the structure the analysis found: only the rank-one terms
whose coefficient is not structurally zero are written out, and only the
reductions they need are computed.
"""
from __future__ import annotations

from .analysis import DescriptorProgram, KernelProgram
from .lower import program_lines
from .parser import POSITION_VARS, DescriptorIR, KernelIR

NJIT = "@njit(cache=True, error_model='numpy')"
NJIT_PARALLEL = "@njit(cache=True, parallel=True, error_model='numpy')"


def quote_source(info, body_line=None) -> list:
    """The DSL function as comment lines, each with its file and line."""
    lines = [f"# DSL source: {info.filename}:{info.first_line}"]
    for k, text in enumerate(info.lines):
        lines.append(f"#   {info.first_line + k:4d} | {text.rstrip()}")
    return lines


# --------------------------------------------------------------------------- descriptor

def descriptor_source(dir_: DescriptorIR, prog: DescriptorProgram) -> list:
    out_names = ["value"] + [f"d_{v}" for v in POSITION_VARS]
    args = ", ".join(POSITION_VARS) + ", zi, zj, params"
    lines = [*quote_source(dir_.source), NJIT, f"def site_term({args}):",
             f'    """One feature term of {dir_.source.name} and its gradient in ri and rj '
             f'(from {dir_.source.filename}:{dir_.body_line})."""']
    lines += [f"    {p} = params[{k}]" for k, p in enumerate(dir_.param_names)]
    lines += program_lines(prog.term, "numba", out_names)
    lines += [f"    return {', '.join(out_names)}", "", ""]
    call = ("site_term(R[i, 0], R[i, 1], R[i, 2], R[j, 0], R[j, 1], R[j, 2], "
            "z[i], z[j], params[c])")
    if dir_.over.name == "pairs":
        lines += [NJIT, "def descriptor_one(R, z, params, d, jac):",
                  '    """Features d (F,) and sparse Jacobian jac (F, 2, 3) of one geometry R (N, 3);',
                  '    feature (pair i<j, channel c) touches atoms i (slot 0) and j (slot 1)."""',
                  "    n = R.shape[0]",
                  "    f = 0",
                  "    for i in range(n):",
                  "        for j in range(i + 1, n):",
                  "            for c in range(params.shape[0]):",
                  f"                v, a0, a1, a2, b0, b1, b2 = {call}",
                  "                d[f] = v",
                  "                jac[f, 0, 0] = a0", "                jac[f, 0, 1] = a1", "                jac[f, 0, 2] = a2",
                  "                jac[f, 1, 0] = b0", "                jac[f, 1, 1] = b1", "                jac[f, 1, 2] = b2",
                  "                f += 1", "", ""]
    else:
        lines += [NJIT, "def descriptor_one(R, z, params, d, jac):",
                  '    """Features d (F,) and sparse Jacobian jac (F, N, 3) of one geometry R (N, 3);',
                  '    feature (atom i, channel c) sums the term over neighbours j != i and touches',
                  '    atom i (slot 0) and every neighbour j (slots 1.., in atom order)."""',
                  "    n = R.shape[0]",
                  "    f = 0",
                  "    for i in range(n):",
                  "        for c in range(params.shape[0]):",
                  "            total = 0.0",
                  "            gi0 = 0.0", "            gi1 = 0.0", "            gi2 = 0.0",
                  "            slot = 1",
                  "            for j in range(n):",
                  "                if j == i:",
                  "                    continue",
                  f"                v, a0, a1, a2, b0, b1, b2 = {call}",
                  "                total += v",
                  "                gi0 += a0", "                gi1 += a1", "                gi2 += a2",
                  "                jac[f, slot, 0] = b0", "                jac[f, slot, 1] = b1",
                  "                jac[f, slot, 2] = b2",
                  "                slot += 1",
                  "            d[f] = total",
                  "            jac[f, 0, 0] = gi0", "            jac[f, 0, 1] = gi1", "            jac[f, 0, 2] = gi2",
                  "            f += 1", "", ""]
    lines += [NJIT_PARALLEL, "def descriptor_many(R, z, params, D, JAC):",
              '    """descriptor_one for every geometry of R (M, N, 3), in parallel."""',
              "    for m in prange(R.shape[0]):",
              "        descriptor_one(R[m], z, params, D[m], JAC[m])", "", ""]
    return lines


# --------------------------------------------------------------------------- kernel

def kernel_source(kir: KernelIR, prog: KernelProgram) -> list:
    unpack = [f"    {h} = hyper[{k}]" for k, h in enumerate(kir.hyper_names)]
    lines = [*quote_source(kir.source)]
    for note in prog.guards:
        lines.append(f"# at s = 0: {note}")
    lines += [NJIT, "def kernel_value(s, t, hyper):",
              f'    """k = g(s, t) of {kir.source.name} (from {kir.source.filename}:{kir.body_line}),',
              '    with s = |d - dp|^2 and t = d . dp."""', *unpack]
    lines += program_lines(prog.value, "numba", ["g"])
    lines += ["    return g", "", ""]
    lines += [NJIT, "def kernel_coefficients(s, t, hyper):",
              '    """dg/ds, dg/dt, d2g/ds2, d2g/dsdt, d2g/dt2 (by gdmlc AD, simplified)."""', *unpack]
    lines += program_lines(prog.coefficients, "numba", ["g_s", "g_t", "g_ss", "g_st", "g_tt"])
    lines += ["    return g_s, g_t, g_ss, g_st, g_tt", "", ""]
    return lines


# --------------------------------------------------------------------------- model

def rank_one_terms(present):
    """(coefficient expression, left vector, right vector) of H's rank-one part."""
    terms = []
    if present["g_ss"]:
        terms.append(("-4.0 * g_ss", "u_delta", "w_delta"))
    if present["g_st"]:
        terms.append(("2.0 * g_st", "u_delta", "w_d"))
        terms.append(("-2.0 * g_st", "u_dp", "w_delta"))
    if present["g_tt"]:
        terms.append(("g_tt", "u_dp", "w_d"))
    return terms


def model_source(prog: KernelProgram) -> list:
    present = prog.present
    terms = rank_one_terms(present)
    vectors = sorted({v for _, a, b in terms for v in (a, b)})
    # which descriptor-space vector each atom-space vector contracts, per permutation p
    contracted = {"u_delta": "diff", "u_dp": "b", "w_delta": "diff", "w_d": "d[f]"}
    identity = ("g_t - 2.0 * g_s" if present["g_t"] and present["g_s"] else
                "-2.0 * g_s" if present["g_s"] else "g_t")
    layout = ["A (F, 3N)"] + [f"{v} (P, 3N)" for v in vectors] + [f"coef{n} (P,)" for n in range(len(terms))]

    L = [NJIT, "def work_size(n_features, n3, n_perms):",
         f'    """Scratch doubles force_block_parts needs: {", ".join(layout)}."""',
         f"    return n_features * n3 + {len(vectors)} * n_perms * n3 + {len(terms)} * n_perms", "", "",
         NJIT, "def force_block_parts(d, jac, dp, jacp, atoms, fperms, hyper, out, work):",
         '    """out (3N, 3N) = sum over permutations P of J(x)^T H(d, dp_P) J(x\'_P),',
         "    H = d2k/dd ddp^T = c_P I + rank-one terms; J sparse (F, K, 3) with atom table atoms",
         "    (F, K); dp_P = dp[fperms[p]], J(x'_P) = jacp[fperms[p]]; work: work_size(F, 3N, P).",
         f"    Structure found in the kernel: c_P = {identity}; rank-one terms:",
         f"    {'; '.join(f'{c} {a} {b}^T' for c, a, b in terms) or 'none'}.",
         "    Summed over P in descriptor space first, so that the expensive products are long",
         "    contiguous rows (vectorised): out = J^T A + sum_P U_P coef_P W_P^T with",
         '    A = sum_P c_P J\'_P (F, 3N) and U_P, W_P (3N) the rank-one vectors."""',
         "    n_features, n_slots = atoms.shape",
         "    n3 = out.shape[0]",
         "    n_perms = fperms.shape[0]",
         "    A = work[:n_features * n3].reshape((n_features, n3))",
         "    A[:, :] = 0.0",
         "    offset = n_features * n3"]
    for v in vectors:
        L += [f"    {v} = work[offset:offset + n_perms * n3].reshape((n_perms, n3))",
              f"    {v}[:, :] = 0.0",
              "    offset += n_perms * n3"]
    for n in range(len(terms)):
        L += [f"    coef{n} = work[offset:offset + n_perms]", "    offset += n_perms"]
    L += ["    for p in range(n_perms):",
          "        perm = fperms[p]",
          "        s = 0.0",
          "        t = 0.0",
          "        for f in range(n_features):",
          "            b = dp[perm[f]]",
          "            diff = d[f] - b",
          "            s += diff * diff",
          "            t += d[f] * b",
          "        g_s, g_t, g_ss, g_st, g_tt = kernel_coefficients(s, t, hyper)",
          f"        c_identity = {identity}"]
    L += [f"        coef{n}[p] = {coef}" for n, (coef, _, _) in enumerate(terms)]
    L += ["        for f in range(n_features):",
          "            g = perm[f]",
          "            b = dp[g]",
          "            diff = d[f] - b",
          "            # row f of A gains c_P times row g of J', scattered through its atom table",
          "            for l in range(n_slots):",
          "                b3 = 3 * atoms[g, l]"]
    L += [f"                A[f, b3 + {c}] += c_identity * jacp[g, l, {c}]" for c in range(3)]
    for v in (w for w in vectors if w.startswith("w_")):
        L += [f"                {v}[p, b3 + {c}] += jacp[g, l, {c}] * {contracted[v]}" for c in range(3)]
    left = [v for v in vectors if v.startswith("u_")]
    if left:
        L += ["            for k in range(n_slots):", "                a3 = 3 * atoms[f, k]"]
        for v in left:
            L += [f"                {v}[p, a3 + {c}] += jac[f, k, {c}] * {contracted[v]}" for c in range(3)]
    L += ["    # out = J^T A: every nonzero of J adds a multiple of a row of A",
          "    out[:, :] = 0.0",
          "    for f in range(n_features):",
          "        for k in range(n_slots):",
          "            a3 = 3 * atoms[f, k]",
          "            for c in range(3):",
          "                x = jac[f, k, c]",
          "                row = out[a3 + c]",
          "                for b in range(n3):",
          "                    row[b] += x * A[f, b]"]
    if terms:
        L += ["    # rank-one terms, all permutations",
              "    for a in range(n3):",
              "        row = out[a]",
              "        for p in range(n_perms):"]
        for n, (_, u, w) in enumerate(terms):
            L += [f"            x = coef{n}[p] * {u}[p, a]",
                  "            for b in range(n3):",
                  f"                row[b] += x * {w}[p, b]"]
    L += ["", ""]

    L += [NJIT_PARALLEL, "def assemble_rows(D, JAC, atoms, fperms, hyper, K, rows, n_atoms, mirror):",
          '    """Training-matrix blocks (i, j >= i) for the block rows listed in `rows`, in',
          "    parallel; each block is computed once and, with `mirror`, also written transposed.",
          "    Force rows come first in K; energy rows (if any) follow them, see assemble_energy_rows.",
          '    Callers interleave long and short rows in `rows` so threads get equal work."""',
          "    M = D.shape[0]",
          "    n3 = 3 * n_atoms",
          "    for r in prange(rows.shape[0]):",
          "        i = rows[r]",
          "        block = np.empty((n3, n3))",
          "        work = np.empty(work_size(D.shape[1], n3, fperms.shape[0]))",
          "        for j in range(i, M):",
          "            force_block_parts(D[i], JAC[i], D[j], JAC[j], atoms, fperms, hyper, block, work)",
          "            # explicit loops: Numba's 2-D slice assignment costs more than the copy itself",
          "            for a in range(n3):",
          "                K_row = K[i * n3 + a]",
          "                for b in range(n3):",
          "                    K_row[j * n3 + b] = block[a, b]",
          "            if mirror and j != i:",
          "                for b in range(n3):",
          "                    K_row = K[j * n3 + b]",
          "                    for a in range(n3):",
          "                        K_row[i * n3 + a] = block[a, b]",
          "", ""]

    L += [NJIT_PARALLEL, "def predict(DQ, JACQ, atoms, DT, BT, hyper, E, F):",
          '    """Energies E (Q,) and forces F (Q, N, 3) at query geometries from the training',
          "    descriptors DT (MP, F) and contracted coefficients BT = J alpha (MP, F), both",
          "    already permuted: F = J^T sum_m H(d, dt_m) bt_m, E = -sum_m grad_dp k . bt_m.",
          '    No 3N x 3N block is formed."""',
          "    n_features, n_slots = atoms.shape",
          "    for q in prange(DQ.shape[0]):",
          "        d = DQ[q]",
          "        acc = np.zeros(n_features)",
          "        energy = 0.0",
          "        for m in range(DT.shape[0]):",
          "            dp = DT[m]",
          "            beta = BT[m]",
          "            s = 0.0", "            t = 0.0",
          "            delta_beta = 0.0", "            d_beta = 0.0",
          "            for f in range(n_features):",
          "                diff = d[f] - dp[f]",
          "                s += diff * diff",
          "                t += d[f] * dp[f]",
          "                delta_beta += diff * beta[f]",
          "                d_beta += d[f] * beta[f]",
          "            g_s, g_t, g_ss, g_st, g_tt = kernel_coefficients(s, t, hyper)",
          "            # H beta = c_identity beta + c_delta delta + c_dp dp",
          f"            c_identity = {identity}",
          "            c_delta = -4.0 * g_ss * delta_beta + 2.0 * g_st * d_beta",
          "            c_dp = -2.0 * g_st * delta_beta + g_tt * d_beta",
          "            energy += 2.0 * g_s * delta_beta - g_t * d_beta",
          "            for f in range(n_features):",
          "                acc[f] += c_identity * beta[f] + c_delta * (d[f] - dp[f]) + c_dp * dp[f]",
          "        E[q] = energy",
          "        forces = F[q]",
          "        forces[:, :] = 0.0",
          "        jac = JACQ[q]",
          "        for f in range(n_features):",
          "            for k in range(n_slots):",
          "                a = atoms[f, k]",
          "                forces[a, 0] += jac[f, k, 0] * acc[f]",
          "                forces[a, 1] += jac[f, k, 1] * acc[f]",
          "                forces[a, 2] += jac[f, k, 2] * acc[f]",
          "", ""]
    L += [NJIT_PARALLEL, "def predict_coefficients(DQ, DT, NQ, NT, T, DB, QC, TC, TB, CB, hyper, CI, CD, CP, E):",
          '    """Batched prediction, elementwise part.  All descriptors arrive centred on the mean c',
          "    of the training descriptors (DQ, DT), which keeps the differences below accurate:",
          "    T = DQ DT^T, DB = DQ BT^T (Q, MP), NQ, NT squared norms, QC = DQ.c + c.c (Q,),",
          "    TC = DT.c, TB = DT.BT rowwise, CB = c.BT (MP,).  Out: the coefficients of",
          "    H beta = CI beta + CD (d - dt) + CP dt for every (query, training) pair, and the",
          "    energies E (Q,).  Where s = NQ + NT - 2 T has lost over half its digits (s below 1e-6",
          '    of NQ + NT) it is recomputed from the descriptors."""',
          "    n_features = DQ.shape[1]",
          "    for q in prange(DQ.shape[0]):",
          "        energy = 0.0",
          "        for m in range(DT.shape[0]):",
          "            s = NQ[q] + NT[m] - 2.0 * T[q, m]",
          "            if s < 1e-6 * (NQ[q] + NT[m]):",
          "                s = 0.0",
          "                for f in range(n_features):",
          "                    s += (DQ[q, f] - DT[m, f]) * (DQ[q, f] - DT[m, f])",
          "            t = T[q, m] + QC[q] + TC[m]  # the kernel's t = d.dt, uncentred",
          "            d_beta = DB[q, m] + CB[m]",
          "            delta_beta = DB[q, m] - TB[m]",
          "            g_s, g_t, g_ss, g_st, g_tt = kernel_coefficients(s, t, hyper)",
          f"            CI[q, m] = {identity}",
          "            CD[q, m] = -4.0 * g_ss * delta_beta + 2.0 * g_st * d_beta",
          "            CP[q, m] = -2.0 * g_st * delta_beta + g_tt * d_beta",
          "            energy += 2.0 * g_s * delta_beta - g_t * d_beta",
          "        E[q] = energy",
          "", ""]
    L += [NJIT_PARALLEL, "def forces_from_descriptor_gradients(JACQ, atoms, ACC, F):",
          '    """F[q] = J(x_q)^T ACC[q]: atom-space forces (Q, N, 3) from descriptor-space ACC (Q, F)."""',
          "    n_features, n_slots = atoms.shape",
          "    for q in prange(JACQ.shape[0]):",
          "        forces = F[q]",
          "        forces[:, :] = 0.0",
          "        for f in range(n_features):",
          "            for k in range(n_slots):",
          "                a = atoms[f, k]",
          "                forces[a, 0] += JACQ[q, f, k, 0] * ACC[q, f]",
          "                forces[a, 1] += JACQ[q, f, k, 1] * ACC[q, f]",
          "                forces[a, 2] += JACQ[q, f, k, 2] * ACC[q, f]",
          "", ""]
    L += [NJIT_PARALLEL, "def contract(JAC, atoms, V, B):",
          '    """B[m] = J(x_m) V[m]: descriptor-space vectors (M, F) from atom-space V (M, N, 3)."""',
          "    n_features, n_slots = atoms.shape",
          "    for m in prange(JAC.shape[0]):",
          "        for f in range(n_features):",
          "            total = 0.0",
          "            for k in range(n_slots):",
          "                a = atoms[f, k]",
          "                total += (JAC[m, f, k, 0] * V[m, a, 0] + JAC[m, f, k, 1] * V[m, a, 1]",
          "                          + JAC[m, f, k, 2] * V[m, a, 2])",
          "            B[m, f] = total",
          "", ""]
    L += [NJIT, "def energy_force_blocks(d, jac, dp, jacp, atoms, fperms, hyper, grad_x, grad_xp):",
          '    """k(x, x\') summed over permutations; grad_x (3N,) = d k / dx and grad_xp (3N,) = d k / dx\'',
          '    (the energy-force covariances are -grad)."""',
          "    n_features, n_slots = atoms.shape",
          "    grad_x[:] = 0.0",
          "    grad_xp[:] = 0.0",
          "    total = 0.0",
          "    for p in range(fperms.shape[0]):",
          "        perm = fperms[p]",
          "        s = 0.0", "        t = 0.0",
          "        for f in range(n_features):",
          "            b = dp[perm[f]]",
          "            s += (d[f] - b) * (d[f] - b)",
          "            t += d[f] * b",
          "        total += kernel_value(s, t, hyper)",
          "        g_s, g_t, g_ss, g_st, g_tt = kernel_coefficients(s, t, hyper)",
          "        for f in range(n_features):",
          "            g = perm[f]",
          "            diff = d[f] - dp[g]",
          "            gx = 2.0 * g_s * diff + g_t * dp[g]",
          "            gxp = -2.0 * g_s * diff + g_t * d[f]",
          "            for k in range(n_slots):",
          "                a3 = 3 * atoms[f, k]",
          "                b3 = 3 * atoms[g, k]",
          "                for c in range(3):",
          "                    grad_x[a3 + c] += jac[f, k, c] * gx",
          "                    grad_xp[b3 + c] += jacp[g, k, c] * gxp",
          "    return total",
          "", ""]
    L += [NJIT_PARALLEL, "def assemble_energy_rows(D, JAC, atoms, fperms, hyper, K, n_atoms):",
          '    """Energy parts of the joint energy+force training matrix (sGDML\'s E_cstr), upper',
          "    triangle: K[force rows of i, energy column j] = cov(F_i, E_j) = -grad_x k(x_i, x_j)",
          '    and K[energy row i, energy column j >= i] = k(x_i, x_j); energy rows follow 3NM."""',
          "    M = D.shape[0]",
          "    n3 = 3 * n_atoms",
          "    e0 = n3 * M",
          "    for i in prange(M):",
          "        grad_x = np.empty(n3)",
          "        grad_xp = np.empty(n3)",
          "        for j in range(M):",
          "            k = energy_force_blocks(D[i], JAC[i], D[j], JAC[j], atoms, fperms, hyper, grad_x, grad_xp)",
          "            for a in range(n3):",
          "                K[i * n3 + a, e0 + j] = -grad_x[a]",
          "            if j >= i:",
          "                K[e0 + i, e0 + j] = k",
          "", ""]
    L += [NJIT_PARALLEL, "def predict_energy_weights(DQ, JACQ, atoms, DT, WT, hyper, E, F):",
          '    """Adds the energy-constraint terms of a joint energy+force model to E and F:',
          "    E += sum_m w_m k(d, dt_m), F += -J^T sum_m w_m grad_d k(d, dt_m); DT (MP, F)",
          '    permuted training descriptors, WT (MP,) their energy coefficients."""',
          "    n_features, n_slots = atoms.shape",
          "    for q in prange(DQ.shape[0]):",
          "        d = DQ[q]",
          "        acc = np.zeros(n_features)",
          "        energy = 0.0",
          "        for m in range(DT.shape[0]):",
          "            dp = DT[m]",
          "            s = 0.0", "            t = 0.0",
          "            for f in range(n_features):",
          "                s += (d[f] - dp[f]) * (d[f] - dp[f])",
          "                t += d[f] * dp[f]",
          "            energy += WT[m] * kernel_value(s, t, hyper)",
          "            g_s, g_t, g_ss, g_st, g_tt = kernel_coefficients(s, t, hyper)",
          "            for f in range(n_features):",
          "                acc[f] -= WT[m] * (2.0 * g_s * (d[f] - dp[f]) + g_t * dp[f])",
          "        E[q] += energy",
          "        forces = F[q]",
          "        jac = JACQ[q]",
          "        for f in range(n_features):",
          "            for k in range(n_slots):",
          "                a = atoms[f, k]",
          "                forces[a, 0] += jac[f, k, 0] * acc[f]",
          "                forces[a, 1] += jac[f, k, 1] * acc[f]",
          "                forces[a, 2] += jac[f, k, 2] * acc[f]",
          "", ""]
    return L


def module_source(title: str, parts: list, metadata: dict) -> str:
    header = [f'"""{title}', "", "Generated by gdmlc; do not edit: it is rebuilt whenever the DSL source or the",
              'compiler changes (the file name carries a hash of both)."""',
              "import math", "", "import numpy as np", "from numba import njit, prange", "",
              f"METADATA = {metadata!r}", "", ""]
    return "\n".join(header + [line for part in parts for line in part]).rstrip() + "\n"
