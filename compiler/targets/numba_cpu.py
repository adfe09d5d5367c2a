"""Emit the readable Numba module for a descriptor, a kernel, or both.

Scalar bodies come from the simplified derivative programs; the loops around
them (sparse Jacobians, force blocks, prediction, assembly) are templates
specialised to the structure the analysis found: only the rank-one terms
whose coefficient is not structurally zero are written out, and only the
reductions they need are computed.
"""
from __future__ import annotations

from compiler.middle import ir
from compiler.middle.analysis import DescriptorProgram, KernelProgram
from compiler.targets.spelling import program_lines
from compiler.middle.structure import Matrix, Vector, component, spell
from compiler.front.records import DescriptorIR, KernelIR, user_var

NJIT = "@njit(cache=True, error_model='numpy')"
NJIT_PARALLEL = "@njit(cache=True, parallel=True, error_model='numpy')"
# serial and releasing the GIL: the caller runs chunks of work on its own threads
NJIT_NOGIL = "@njit(cache=True, nogil=True, error_model='numpy')"
# reassociation lets the loop's own sums (energies, row sums) vectorise: 2x faster; it does
# not reach the kernel's formulas, which are compiled on their own, without it
NJIT_NOGIL_REASSOC = "@njit(cache=True, nogil=True, error_model='numpy', fastmath={'reassoc'})"
NJIT_PARALLEL_REASSOC = "@njit(cache=True, parallel=True, error_model='numpy', fastmath={'reassoc'})"
PREDICT_TILE = 256  # training rows per tile of predict_tiles: its arrays stay in the L1/L2 cache


def quote_source(info, body_line=None) -> list:
    """The DSL function as comment lines, each with its file and line."""
    lines = [f"# DSL source: {info.filename}:{info.first_line}"]
    for k, text in enumerate(info.lines):
        lines.append(f"#   {info.first_line + k:4d} | {text.rstrip()}")
    return lines


def unpack_lines(names, array) -> list:
    """`u_name = array[k]`: the DSL's parameters or hyperparameters under their IR names."""
    return [f"    {user_var(name)} = {array}[{k}]" for k, name in enumerate(names)]


# --------------------------------------------------------------------------- descriptor

def descriptor_source(dir_: DescriptorIR, prog: DescriptorProgram) -> list:
    space = dir_.over
    out_names = ["value"] + [f"d_{v}" for v in space.position_vars]
    args = ", ".join([*space.position_vars, *space.z_vars, "params"])
    lines = [*quote_source(dir_.source), NJIT, f"def site_term({args}):",
             f'    """One feature term of {dir_.source.name} and its gradient in {" and ".join(space.position_args)} '
             f'(from {dir_.source.filename}:{dir_.body_line})."""']
    lines += unpack_lines(dir_.param_names, "params")
    lines += program_lines(prog.term, "numba", out_names)
    lines += [f"    return {', '.join(out_names)}", "", ""]
    # the space writes the loop over its sites around the site_term call
    lines += [NJIT, "def descriptor_one(R, z, params, d, jac):", *space.numba_docstring(),
              "    n = R.shape[0]",
              "    f = 0",
              *space.numba_loop(space.site_call("R[{atom}, {k}]")), "", ""]
    lines += [NJIT_PARALLEL, "def descriptor_many(R, z, params, D, JAC):",
              '    """descriptor_one for every geometry of R (M, N, 3), in parallel."""',
              "    for m in prange(R.shape[0]):",
              "        descriptor_one(R[m], z, params, D[m], JAC[m])", "", ""]
    return lines


# --------------------------------------------------------------------------- kernel

def kernel_source(kir: KernelIR, prog: KernelProgram) -> list:
    unpack = unpack_lines(kir.hyper_names, "hyper")
    lines = [*quote_source(kir.source)]
    for note in prog.guards:
        lines.append(f"# at s = 0: {note}")
    lines += [NJIT, "def kernel_value(s, t, hyper):",
              f'    """k = g(s, t) of {kir.source.name} (from {kir.source.filename}:{kir.body_line}),',
              '    with s = |d - dp|^2 and t = d . dp."""', *unpack]
    lines += program_lines(prog.value, "numba", ["g"])
    lines += ["    return g", "", ""]
    for name, style, why in (("kernel_coefficients", "numba", ""),
                             ("kernel_coefficients_vector", "numba_vector",
                              "\n    The same, spelled for loops LLVM vectorises (prediction).")):
        lines += [NJIT, f"def {name}(s, t, hyper):",
                  f'    """The partials {", ".join(prog.partials)} of g that the kernel\'s structure uses '
                  f'(by gdmlc AD, simplified).{why}"""', *unpack]
        lines += program_lines(prog.coefficients, style, prog.partials)
        lines += [f"    return {partials_tuple(prog)}", "", ""]
    return lines


def partials_tuple(prog: KernelProgram) -> str:
    """The partials kernel_coefficients returns, as a tuple to return or unpack (`a, b` or `a,`)."""
    names = prog.partials
    return ", ".join(names) + ("," if len(names) == 1 else "")


# --------------------------------------------------------------------------- model

def rank_one_terms(hessian: Matrix):
    """(coefficient expression, left vector, right vector) of H's rank-one part: the structure's
    terms c u w^T, with u and w named u_<basis> and w_<basis> in the generated loops."""
    return [(coef, f"u_{u}", f"w_{w}") for (u, w), coef in hessian.terms.items()]


def describe_terms(terms) -> str:
    """The rank-one terms for a docstring: `coefficient u_delta w_delta^T; ...`."""
    return "; ".join(f"{spell(c)} {u} {w}^T" for c, u, w in terms) or "none"


# Templates index the structure's h_beta = c_identity beta + c_delta delta + c_dp dp by these
# names; a kernel's H beta has no other terms (grad_d k is along delta and dp).
H_BETA_NAMES = {"beta": "c_identity", "delta": "c_delta", "dp": "c_dp"}


def h_beta_coefficients(prog: KernelProgram) -> dict:
    """c_identity, c_delta, c_dp (by name) as expressions from the structure; ir.ZERO if absent."""
    h_beta = prog.structure.h_beta
    extra = set(h_beta.terms) - set(H_BETA_NAMES)
    if extra:
        raise AssertionError(f"H beta has terms along {sorted(extra)}, which the templates do not handle")
    return {name: h_beta[b] for b, name in H_BETA_NAMES.items()}


def spell_along(vector: Vector, names: dict, order=None) -> str:
    """One feature's entry of a structure vector, each basis vector spelled through ``names``."""
    if order is not None:
        vector = Vector({b: vector.terms[b] for b in order if b in vector.terms})
    return spell(component(vector), "numba", names)


def model_source(prog: KernelProgram) -> list:
    structure = prog.structure
    terms = rank_one_terms(structure.hessian)
    partials = partials_tuple(prog)
    # the rank-one terms coef u w^T are folded into A: the descriptor-space left vector u
    # (delta or dp_P, per feature) times the atom-space right vector J'_P^T w
    right = sorted({w for _, _, w in terms})
    left_value = {"u_delta": "diff", "u_dp": "b", "u_d": "d[f]"}
    # which descriptor-space vector each atom-space right vector contracts, per feature f
    contracted = {"w_delta": "diff", "w_d": "d[f]", "w_dp": "b"}
    identity = spell(structure.hessian.identity)
    h_beta = {name: spell(c) for name, c in h_beta_coefficients(prog).items()}
    energy = spell(structure.energy_term)
    uses_dp = "dp" in structure.h_beta.terms
    # each basis vector's entry for feature f: against the permuted dp[g] (force blocks), or dp[f]
    feature_names = {"delta": "diff", "d": "d[f]", "dp": "dp[g]"}
    same_feature_names = {"delta": "(d[f] - dp[f])", "d": "d[f]", "dp": "dp[f]", "beta": "beta[f]"}
    h_beta_sum = spell_along(Vector({b: ir.var(H_BETA_NAMES[b]) for b in structure.h_beta.terms}),
                             same_feature_names, order=("beta", "delta", "dp"))
    layout = ["A (F, 3N)"] + [f"{v} (3N)" for v in right]

    L = [NJIT, "def work_size(n_features, n3):",
         f'    """Scratch doubles force_block_parts needs: {", ".join(layout)}."""',
         f"    return (n_features + {len(right)}) * n3", "", "",
         NJIT, "def force_block_parts(d, jac, dp, jacp, atoms, fperms, hyper, out, work):",
         '    """out (3N, 3N) = sum over permutations P of J(x)^T H(d, dp_P) J(x\'_P),',
         "    H = d2k/dd ddp^T = c_P I + rank-one terms; J sparse (F, K, 3) with atom table atoms",
         "    (F, K); dp_P = dp[fperms[p]], J(x'_P) = jacp[fperms[p]]; work: work_size(F, 3N).",
         f"    Structure found in the kernel: c_P = {identity}; rank-one terms:",
         f"    {describe_terms(terms)}.",
         "    Summed over P in descriptor space first: out = J^T A with",
         "    A = sum_P (c_P J'_P + sum_terms coef u (J'_P^T w)^T) (F, 3N), so that the one",
         '    expensive product is long contiguous rows (vectorised)."""',
         "    n_features, n_slots = atoms.shape",
         "    n3 = out.shape[0]",
         "    n_perms = fperms.shape[0]",
         "    A = work[:n_features * n3].reshape((n_features, n3))",
         "    A[:, :] = 0.0"]
    for k, v in enumerate(right):
        L += [f"    {v} = work[(n_features + {k}) * n3:(n_features + {k + 1}) * n3]"]
    L += ["    for p in range(n_perms):",
          "        perm = fperms[p]",
          "        s = 0.0",
          "        t = 0.0",
          "        for f in range(n_features):",
          "            b = dp[perm[f]]",
          "            diff = d[f] - b",
          "            s += diff * diff",
          "            t += d[f] * b",
          f"        {partials} = kernel_coefficients(s, t, hyper)",
          f"        c_identity = {identity}"]
    L += [f"        {v}[:] = 0.0" for v in right]
    L += ["        for f in range(n_features):",
          "            g = perm[f]",
          *(["            b = dp[g]", "            diff = d[f] - b"] if right else []),
          "            # row f of A gains c_P times row g of J', scattered through its atom table",
          "            for l in range(n_slots):",
          "                b3 = 3 * atoms[g, l]"]
    L += [f"                A[f, b3 + {c}] += c_identity * jacp[g, l, {c}]" for c in range(3)]
    for v in right:
        L += [f"                {v}[b3 + {c}] += jacp[g, l, {c}] * {contracted[v]}" for c in range(3)]
    if terms:
        L += ["        # rank-one terms: row f of A gains coef u[f] times the right vectors",
              "        for f in range(n_features):",
              "            b = dp[perm[f]]",
              "            diff = d[f] - b",
              "            a_row = A[f]  # 1-D views: Numba vectorises these loops, not 2-D indexing"]
        L += [f"            x{n} = {spell(coef * ir.var(u), 'numba', left_value)}"
              for n, (coef, u, _) in enumerate(terms)]
        update = " + ".join(f"x{n} * {w}[col]" for n, (_, _, w) in enumerate(terms))
        L += ["            for col in range(n3):",
              f"                a_row[col] += {update}"]
    L += ["    # out = J^T A: every nonzero of J adds a multiple of a row of A",
          "    out[:, :] = 0.0",
          "    for f in range(n_features):",
          "        a_row = A[f]",
          "        for k in range(n_slots):",
          "            a3 = 3 * atoms[f, k]",
          "            for c in range(3):",
          "                x = jac[f, k, c]",
          "                row = out[a3 + c]",
          "                for col in range(n3):",
          "                    row[col] += x * a_row[col]",
          "", ""]

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
          "        work = np.empty(work_size(D.shape[1], n3))",
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

    L += [NJIT, "def add_forces(jac, atoms, acc, forces):",
          '    """forces (N, 3) += J^T acc: descriptor-space acc (F,) through one sparse Jacobian (F, K, 3)."""',
          "    n_features, n_slots = atoms.shape",
          "    for f in range(n_features):",
          "        for k in range(n_slots):",
          "            a = atoms[f, k]",
          "            forces[a, 0] += jac[f, k, 0] * acc[f]",
          "            forces[a, 1] += jac[f, k, 1] * acc[f]",
          "            forces[a, 2] += jac[f, k, 2] * acc[f]",
          "", ""]
    L += [NJIT_PARALLEL, "def predict(DQ, JACQ, atoms, DT, BT, hyper, E, F):",
          '    """Energies E (Q,) and forces F (Q, N, 3) at query geometries from the training',
          "    descriptors DT (MP, F) and contracted coefficients BT = J alpha (MP, F), both",
          "    already permuted: F = J^T sum_m H(d, dt_m) bt_m, E = -sum_m grad_dp k . bt_m.",
          '    No 3N x 3N block is formed."""',
          "    n_features = atoms.shape[0]",
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
          f"            {partials} = kernel_coefficients(s, t, hyper)",
          "            # H beta = c_identity beta + c_delta delta + c_dp dp",
          *[f"            {name} = {h_beta[name]}" for b, name in H_BETA_NAMES.items()
            if b in structure.h_beta.terms],
          f"            energy += {energy}",
          "            for f in range(n_features):",
          f"                acc[f] += {h_beta_sum}",
          "        E[q] = energy",
          "        F[q] = 0.0",
          "        add_forces(JACQ[q], atoms, acc, F[q])",
          "", ""]
    L += [NJIT_NOGIL_REASSOC, "def predict_coefficients(DQ, DT, NQ, NT, TD, QC, TC, TB, CB, hyper, X, SD, SP, E):",
          '    """Batched prediction, elementwise part, for one chunk of queries (serial: the caller',
          "    runs chunks on several threads).  Descriptors arrive centred on the mean c of the",
          "    training descriptors, which keeps the differences below accurate.  In: TD = DQ [DT; BT]^T",
          "    = [T | DB] (Q, 2 MP), NQ, NT squared norms, QC = DQ.c + c.c (Q,), TC = DT.c,",
          "    TB = DT.BT rowwise, CB = c.BT (MP,).  With H beta = CI beta + CD (d - dt) + CP (dt + c)",
          "    for each (query, training) pair, out: X = [CP - CD | CI] (Q, 2 MP), so that the sum over",
          "    training points is X [DT; BT] + SD d + SP c; SD, SP (Q,) the row sums of CD and CP;",
          "    E (Q,) the energies.  Where s = NQ + NT - 2 T has lost over half its digits (s below",
          '    1e-6 of NQ + NT) it is recomputed from the descriptors."""',
          "    n_features = DQ.shape[1]",
          "    mp = DT.shape[0]",
          "    s_row = np.empty(mp)",
          "    for q in range(DQ.shape[0]):",
          "        # s first, in its own loop: without the rare recomputation branch it vectorises",
          "        for m in range(mp):",
          "            s_row[m] = NQ[q] + NT[m] - 2.0 * TD[q, m]",
          "        for m in range(mp):",
          "            if s_row[m] < 1e-6 * (NQ[q] + NT[m]):",
          "                s = 0.0",
          "                for f in range(n_features):",
          "                    s += (DQ[q, f] - DT[m, f]) * (DQ[q, f] - DT[m, f])",
          "                s_row[m] = s",
          "        energy = 0.0",
          "        sum_delta = 0.0",
          "        sum_dp = 0.0",
          "        for m in range(mp):",
          "            t = TD[q, m] + QC[q] + TC[m]  # the kernel's t = d.dt, uncentred",
          "            d_beta = TD[q, mp + m] + CB[m]",
          "            delta_beta = TD[q, mp + m] - TB[m]",
          f"            {partials} = kernel_coefficients_vector(s_row[m], t, hyper)",
          f"            c_delta = {h_beta['c_delta']}",
          *([f"            c_dp = {h_beta['c_dp']}",
             "            X[q, m] = c_dp - c_delta",
             "            sum_dp += c_dp"] if uses_dp else
            ["            X[q, m] = -c_delta  # no c_dp: H beta has no dp term for this kernel"]),
          f"            X[q, mp + m] = {h_beta['c_identity']}",
          "            sum_delta += c_delta",
          f"            energy += {energy}",
          "        SD[q] = sum_delta",
          "        SP[q] = sum_dp",
          "        E[q] = energy",
          "", ""]
    L += [NJIT_PARALLEL_REASSOC, "def predict_tiles(DQ, NQ, QC, centre, DT, WT, NT, TC, TB, CB, hyper, bounds, chunk, ACC, EP):",
          '    """Prediction without BLAS, the arithmetic of predict_coefficients in cache-sized tiles',
          "    of training rows: for few queries, where matrix products of 10 rows run far below peak.",
          "    Inputs as predict_coefficients (centred DQ, its NQ and QC; WT = [DT; BT]^T (F, 2 MP)).",
          "    Tasks are (share of the training rows given by bounds, chunk of queries); a task takes",
          "    its queries together through each tile, so every row of WT it loads serves all of them.",
          "    Each task writes partial descriptor-space force sums ACC[part, q] (F,) and energies",
          '    EP[part, q], to be summed over parts."""',
          "    n_queries, n_features = DQ.shape",
          "    mp = DT.shape[0]",
          "    n_parts = bounds.shape[0] - 1",
          "    n_chunks = (n_queries + chunk - 1) // chunk",
          f"    tile = {PREDICT_TILE}",
          "    for task in prange(n_parts * n_chunks):",
          "        part = task // n_chunks",
          "        q0 = (task % n_chunks) * chunk",
          "        nq = min(chunk, n_queries - q0)",
          "        t_tile = np.empty((nq, tile))",
          "        b_tile = np.empty((nq, tile))",
          "        x_dt = np.empty((nq, tile))",
          "        x_bt = np.empty((nq, tile))",
          "        sums = np.empty((nq, 2))",
          "        for i in range(nq):",
          "            EP[part, q0 + i] = 0.0",
          "            ACC[part, q0 + i, :] = 0.0",
          "        for m0 in range(bounds[part], bounds[part + 1], tile):",
          "            width = min(tile, bounds[part + 1] - m0)",
          "            # T and DB of the tile, along the training rows (1-D views: 4x faster than",
          "            # 2-D indexing, which Numba does not vectorise)",
          "            t_tile[:, :width] = 0.0",
          "            b_tile[:, :width] = 0.0",
          "            for f in range(n_features):",
          "                w_dt = WT[f, m0:m0 + width]",
          "                w_bt = WT[f, mp + m0:mp + m0 + width]",
          "                for i in range(nq):",
          "                    x = DQ[q0 + i, f]",
          "                    t_row = t_tile[i, :width]",
          "                    b_row = b_tile[i, :width]",
          "                    for k in range(width):",
          "                        t_row[k] += x * w_dt[k]",
          "                        b_row[k] += x * w_bt[k]",
          "            for i in range(nq):",
          "                q = q0 + i",
          "                t_row = t_tile[i, :width]",
          "                b_row = b_tile[i, :width]",
          "                x_dt_row = x_dt[i, :width]  # 1-D views, as above",
          "                x_bt_row = x_bt[i, :width]",
          "                # s over the tile, then the rare recomputation where it lost its digits",
          "                s_row = x_bt_row  # scratch until the coefficients overwrite it",
          "                for k in range(width):",
          "                    s_row[k] = NQ[q] + NT[m0 + k] - 2.0 * t_row[k]",
          "                for k in range(width):",
          "                    if s_row[k] < 1e-6 * (NQ[q] + NT[m0 + k]):",
          "                        s = 0.0",
          "                        for f in range(n_features):",
          "                            s += (DQ[q, f] - DT[m0 + k, f]) * (DQ[q, f] - DT[m0 + k, f])",
          "                        s_row[k] = s",
          "                energy = 0.0",
          "                sum_delta = 0.0",
          "                sum_dp = 0.0",
          "                for k in range(width):",
          "                    m = m0 + k",
          "                    t = t_row[k] + QC[q] + TC[m]  # the kernel's t = d.dt, uncentred",
          "                    d_beta = b_row[k] + CB[m]",
          "                    delta_beta = b_row[k] - TB[m]",
          f"                    {partials} = kernel_coefficients_vector(s_row[k], t, hyper)",
          f"                    c_delta = {h_beta['c_delta']}",
          *([f"                    c_dp = {h_beta['c_dp']}",
             "                    x_dt_row[k] = c_dp - c_delta",
             "                    sum_dp += c_dp"] if uses_dp else
            ["                    x_dt_row[k] = -c_delta"]),
          f"                    x_bt_row[k] = {h_beta['c_identity']}",
          "                    sum_delta += c_delta",
          f"                    energy += {energy}",
          "                EP[part, q] += energy",
          "                sums[i, 0] = sum_delta",
          "                sums[i, 1] = sum_dp",
          "            # the tile's share of X W + SD d + SP c: one dot product per (feature, query)",
          "            for f in range(n_features):",
          "                w_dt = WT[f, m0:m0 + width]",
          "                w_bt = WT[f, mp + m0:mp + m0 + width]",
          "                for i in range(nq):",
          "                    xd = x_dt[i, :width]",
          "                    xb = x_bt[i, :width]",
          "                    total = sums[i, 0] * DQ[q0 + i, f] + sums[i, 1] * centre[f]",
          "                    for k in range(width):",
          "                        total += xd[k] * w_dt[k] + xb[k] * w_bt[k]",
          "                    ACC[part, q0 + i, f] += total",
          "", ""]
    L += [NJIT_NOGIL, "def forces_from_descriptor_gradients(JACQ, atoms, ACC, F):",
          '    """F[q] = J(x_q)^T ACC[q]: atom-space forces (Q, N, 3) from descriptor-space ACC (Q, F)."""',
          "    for q in range(JACQ.shape[0]):",
          "        F[q] = 0.0",
          "        add_forces(JACQ[q], atoms, ACC[q], F[q])",
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
          f"        {partials} = kernel_coefficients(s, t, hyper)",
          "        for f in range(n_features):",
          "            g = perm[f]",
          "            diff = d[f] - dp[g]",
          f"            gx = {spell_along(structure.grad_d, feature_names)}",
          f"            gxp = {spell_along(structure.grad_dp, feature_names)}",
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
          "    n_features = atoms.shape[0]",
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
          f"            {partials} = kernel_coefficients(s, t, hyper)",
          "            for f in range(n_features):",
          f"                acc[f] -= WT[m] * ({spell_along(structure.grad_d, same_feature_names)})",
          "        E[q] += energy",
          "        add_forces(JACQ[q], atoms, acc, F[q])",
          "", ""]
    return L


def module_source(title: str, parts: list, metadata: dict) -> str:
    header = [f'"""{title}', "", "Generated by gdmlc; do not edit: it is rebuilt whenever the DSL source or the",
              'compiler changes (the file name carries a hash of both)."""',
              "import math", "", "import numpy as np", "from numba import njit, prange", "",
              "from compiler.targets.numba_math import vexp", "",
              f"METADATA = {metadata!r}", "", ""]
    return "\n".join(header + [line for part in parts for line in part]).rstrip() + "\n"
