"""Emit the readable Numba CUDA module for a descriptor and a kernel compiled together.

The scalar bodies (one descriptor site term and its position gradient, the
partials of the kernel its structure uses) are the same simplified programs
the CPU module uses, spelled from the rule table's ``cuda`` column; the
kernel's formulas (identity coefficient, rank-one terms, H beta, energy) are
the structure's expressions (compiler/middle/structure.py), spelled the same way.
Only the loops around them differ: every thread owns the outputs it writes
(no atomics), and sums over training points use a shared-memory tree.

Array layouts are those of the CPU module (D (M, F), JAC (M, F, K, 3), atom
table (F, K), training matrix blocks (i, j >= i) at K[i*3N:(i+1)*3N, j*3N:...]),
so the CPU solver and the CPU prediction read what these kernels write.
"""
from __future__ import annotations

from compiler.front.records import DescriptorIR, KernelIR
from compiler.middle.analysis import DescriptorProgram, KernelProgram
from compiler.targets.base import ModuleTarget, Plan
from compiler.targets.common import (describe_terms, h_beta_spelled, layout_lines, partials_tuple, quote_source,
                                     rank_one_terms, site_term_lines, unpack_lines)
from compiler.targets.spelling import program_lines, spell_term

DEVICE = "@cuda.jit(device=True)"
KERNEL = "@cuda.jit"
REDUCE_THREADS = 128  # threads per block in the tree reductions (a power of two)
STYLE = "cuda"  # the primitive table's column for device code


def device_functions(dir_: DescriptorIR, dprog: DescriptorProgram, kir: KernelIR,
                     kprog: KernelProgram) -> list:
    """site_term and kernel_coefficients as CUDA device functions."""
    lines = site_term_lines(dir_, dprog, DEVICE, STYLE) + layout_lines(dir_, DEVICE)
    lines += [*quote_source(kir.source)]
    lines += [f"# at s = 0: {note}" for note in kprog.guards]
    lines += [DEVICE, "def kernel_coefficients(s, t, hyper):",
              f'    """The partials {", ".join(kprog.partials)} of g = {kir.source.name} '
              f'(from {kir.source.filename}:{kir.body_line}),',
              '    with s = |d - dp|^2 and t = d . dp (by gdmlc AD, simplified)."""']
    lines += unpack_lines(kir.hyper_names, "hyper")
    lines += program_lines(kprog.coefficients, STYLE, kprog.partials)
    lines += [f"    return {partials_tuple(kprog)}", "", ""]
    return lines


def descriptor_kernel(dir_: DescriptorIR) -> list:
    space = dir_.over
    lines = [KERNEL, "def descriptor_many(R, z, params, atoms, D, JAC):",
             '    """Features D (M, F) and sparse Jacobians JAC (M, F, K, 3) of geometries R (M, N, 3).',
             "    Thread (m, f) owns feature f of geometry m; the atom table atoms (F, K) names the",
             "    atoms of feature f (channel c = f % channels, element block b = f // channels % blocks),",
             '    in the CPU module\'s order."""',
             "    m, f = cuda.grid(2)",
             "    if m >= R.shape[0] or f >= atoms.shape[0]:",
             "        return",
             "    c = f % params.shape[0]",
             *(["    b = f // params.shape[0] % N_BLOCKS"] if dir_.layout.elements else []),
             "    i = atoms[f, 0]",
             "    D[m, f] = 0.0",
             "    for slot in range(atoms.shape[1]):",
             "        for k in range(3):",
             "            JAC[m, f, slot, k] = 0.0"]
    # the space reads its other atoms from the table and writes the feature's site_term call(s)
    return lines + [*space.cuda_site(space.site_call("R[m, {atom}, {k}]"), dir_.layout), "", ""]


def block_coefficients(kprog: KernelProgram) -> list:
    partials = partials_tuple(kprog)
    return [KERNEL, "def block_coefficients(D, fperms, hyper, pair_i, pair_j, COEF):",
            f'    """Thread (q, p) owns COEF[q, p] = ({partials}) at s = |d_i - d_j[P]|^2,',
            '    t = d_i . d_j[P] for block pair q = (pair_i[q], pair_j[q]) and permutation p."""',
            "    q, p = cuda.grid(2)",
            "    if q >= pair_i.shape[0] or p >= fperms.shape[0]:",
            "        return",
            "    i = pair_i[q]",
            "    j = pair_j[q]",
            "    s = 0.0",
            "    t = 0.0",
            "    for f in range(D.shape[1]):",
            "        b = D[j, fperms[p, f]]",
            "        diff = D[i, f] - b",
            "        s += diff * diff",
            "        t += D[i, f] * b",
            f"    {partials} = kernel_coefficients(s, t, hyper)",
            *[f"    COEF[q, p, {k}] = {name}" for k, name in enumerate(kprog.partials)],
            "", ""]


def assemble_blocks(kprog: KernelProgram) -> list:
    structure = kprog.structure
    identity = spell_term(structure.hessian.identity, STYLE)
    terms = rank_one_terms(structure.hessian)
    lefts = sorted({a for _, a, _ in terms})
    rights = sorted({b for _, _, b in terms})
    # left vectors are read on atom A's features, right vectors on atom B's features of J_j[P]
    left_scale = {"u_delta": "diff", "u_dp": "b", "u_d": "D[i, f]"}
    right_scale = {"w_delta": "diff", "w_d": "D[i, f]", "w_dp": "D[j, g]"}
    L = [KERNEL, "def assemble_blocks(D, JAC, atoms, incidence, fperms, inverse_fperms, COEF, pair_i, pair_j, K):",
         '    """Training-matrix blocks (i, j >= i) for the block pairs (pair_i[q], pair_j[q]):',
         "    K[i*3N:(i+1)*3N, j*3N:(j+1)*3N] = sum over permutations P of J_i^T H(d_i, d_j[P]) J_j[P],",
         f"    H = ({identity}) I + rank-one terms: {describe_terms(terms)}.",
         "    Thread (atoms A * N + B, q) owns the 3x3 sub-block (A, B) of block q, summed in registers",
         "    and written once (neighbouring threads write neighbouring columns).  incidence (N, L, 2)",
         "    lists the (feature, slot) pairs touching each atom (-1: padding); COEF comes from",
         '    block_coefficients.  Blocks below the diagonal are not written (the solver reads i <= j)."""',
         "    ab, q = cuda.grid(2)",
         "    n_slots = atoms.shape[1]",
         "    n_atoms = incidence.shape[0]",
         "    if q >= pair_i.shape[0] or ab >= n_atoms * n_atoms:",
         "        return",
         "    A = ab // n_atoms",
         "    B = ab - A * n_atoms",
         "    i = pair_i[q]",
         "    j = pair_j[q]",
         "    k00 = 0.0", "    k01 = 0.0", "    k02 = 0.0",
         "    k10 = 0.0", "    k11 = 0.0", "    k12 = 0.0",
         "    k20 = 0.0", "    k21 = 0.0", "    k22 = 0.0",
         "    for p in range(fperms.shape[0]):",
         *[f"        {name} = COEF[q, p, {k}]" for k, name in enumerate(kprog.partials)],
         f"        c_identity = {identity}",
         "        # identity term: features f of atom A whose permuted partner g touches atom B",
         "        for e in range(incidence.shape[1]):",
         "            f = incidence[A, e, 0]",
         "            if f < 0:",
         "                break",
         "            k = incidence[A, e, 1]",
         "            g = fperms[p, f]",
         "            for l in range(n_slots):",
         "                if atoms[g, l] == B:",
         "                    x0 = c_identity * JAC[i, f, k, 0]",
         "                    x1 = c_identity * JAC[i, f, k, 1]",
         "                    x2 = c_identity * JAC[i, f, k, 2]",
         "                    y0 = JAC[j, g, l, 0]",
         "                    y1 = JAC[j, g, l, 1]",
         "                    y2 = JAC[j, g, l, 2]",
         "                    k00 += x0 * y0", "                    k01 += x0 * y1", "                    k02 += x0 * y2",
         "                    k10 += x1 * y0", "                    k11 += x1 * y1", "                    k12 += x1 * y2",
         "                    k20 += x2 * y0", "                    k21 += x2 * y1", "                    k22 += x2 * y2"]
    if terms:
        L += ["        # rank-one terms coef u w^T: atom A's 3 entries of each u ..."]
        L += [f"        {v}_{c} = 0.0" for v in lefts + rights for c in range(3)]
        L += ["        for e in range(incidence.shape[1]):",
              "            f = incidence[A, e, 0]",
              "            if f < 0:",
              "                break",
              "            k = incidence[A, e, 1]",
              "            b = D[j, fperms[p, f]]",
              "            diff = D[i, f] - b"]
        L += [f"            {u}_{c} += JAC[i, f, k, {c}] * {left_scale[u]}" for u in lefts for c in range(3)]
        L += ["        # ... times atom B's 3 entries of each w: B's features g of J_j, f = P^-1(g)",
              "        for e in range(incidence.shape[1]):",
              "            g = incidence[B, e, 0]",
              "            if g < 0:",
              "                break",
              "            l = incidence[B, e, 1]",
              "            f = inverse_fperms[p, g]",
              "            diff = D[i, f] - D[j, g]"]
        L += [f"            {w}_{c} += JAC[j, g, l, {c}] * {right_scale[w]}" for w in rights for c in range(3)]
        L += [f"        r{n} = {spell_term(coef, STYLE)}" for n, (coef, _, _) in enumerate(terms)]
        for c in range(3):
            for d in range(3):
                L.append(f"        k{c}{d} += " + " + ".join(f"r{n} * {u}_{c} * {w}_{d}"
                                                             for n, (_, u, w) in enumerate(terms)))
    L += ["    row = i * 3 * n_atoms + 3 * A",
          "    col = j * 3 * n_atoms + 3 * B",
          "    K[row, col] = k00", "    K[row, col + 1] = k01", "    K[row, col + 2] = k02",
          "    K[row + 1, col] = k10", "    K[row + 1, col + 1] = k11", "    K[row + 1, col + 2] = k12",
          "    K[row + 2, col] = k20", "    K[row + 2, col + 1] = k21", "    K[row + 2, col + 2] = k22",
          "", ""]
    return L


def pair_coefficients(kprog: KernelProgram) -> list:
    h_beta = h_beta_spelled(kprog, STYLE)
    return [KERNEL, "def pair_coefficients(DQ, DT, BT, hyper, COEF):",
            '    """Thread (m, q) owns COEF[q, m] = (c_identity, c_delta, c_dp, energy term) of query q',
            "    against permuted training point m, so that H(d_q, dt_m) bt_m =",
            "    c_identity bt_m + c_delta (d_q - dt_m) + c_dp dt_m and the energy is the sum over m of",
            '    the last column (it is -grad_dp k . bt_m)."""',
            "    m, q = cuda.grid(2)  # m fastest: a warp shares one query and reads neighbouring rows",
            "    if q >= DQ.shape[0] or m >= DT.shape[0]:",
            "        return",
            "    s = 0.0", "    t = 0.0", "    delta_beta = 0.0", "    d_beta = 0.0",
            "    for f in range(DQ.shape[1]):",
            "        diff = DQ[q, f] - DT[m, f]",
            "        s += diff * diff",
            "        t += DQ[q, f] * DT[m, f]",
            "        delta_beta += diff * BT[m, f]",
            "        d_beta += DQ[q, f] * BT[m, f]",
            f"    {partials_tuple(kprog)} = kernel_coefficients(s, t, hyper)",
            f"    COEF[q, m, 0] = {h_beta['c_identity']}",
            f"    COEF[q, m, 1] = {h_beta['c_delta']}",
            f"    COEF[q, m, 2] = {h_beta['c_dp']}",
            f"    COEF[q, m, 3] = {spell_term(kprog.structure.energy_term, STYLE)}",
            "", ""]


def tree_sums(kprog: KernelProgram) -> list:
    """block_tree_sum and the two reductions over training points that use it."""
    return [DEVICE, "def block_tree_sum(partial, tid):",
            '    """partial[0] = the sum of partial[0:blockDim.x] (a power of two), by a shared-memory tree;',
            '    every thread of the block must call it."""',
            "    cuda.syncthreads()",
            "    width = cuda.blockDim.x // 2",
            "    while width > 0:",
            "        if tid < width:",
            "            partial[tid] += partial[tid + width]",
            "        cuda.syncthreads()",
            "        width //= 2",
            "", "",
            KERNEL, "def sum_features(DQ, DT, BT, COEF, ACC):",
            '    """Block (q, f): ACC[q, f] = sum over m of (H(d_q, dt_m) bt_m)[f]; each thread sums a',
            "    strided share of m, then a shared-memory tree adds the partial sums (blockDim.x threads,",
            '    a power of two; blockDim.x * 8 bytes of dynamic shared memory)."""',
            "    q = cuda.blockIdx.x",
            "    f = cuda.blockIdx.y",
            "    tid = cuda.threadIdx.x",
            "    partial = cuda.shared.array(0, float64)  # dynamic: one buffer per block, sized at launch",
            "    total = 0.0",
            "    if q < DQ.shape[0] and f < DQ.shape[1]:",
            "        for m in range(tid, DT.shape[0], cuda.blockDim.x):",
            "            total += (COEF[q, m, 0] * BT[m, f] + COEF[q, m, 1] * (DQ[q, f] - DT[m, f])",
            "                      + COEF[q, m, 2] * DT[m, f])",
            "    partial[tid] = total",
            "    block_tree_sum(partial, tid)",
            "    if tid == 0 and q < DQ.shape[0] and f < DQ.shape[1]:",
            "        ACC[q, f] = partial[0]",
            "", "",
            KERNEL, "def sum_energies(COEF, E):",
            '    """Block q: E[q] = sum over m of COEF[q, m, 3], by a shared-memory tree."""',
            "    q = cuda.blockIdx.x",
            "    tid = cuda.threadIdx.x",
            "    partial = cuda.shared.array(0, float64)  # dynamic: one buffer per block, sized at launch",
            "    total = 0.0",
            "    if q < COEF.shape[0]:",
            "        for m in range(tid, COEF.shape[1], cuda.blockDim.x):",
            "            total += COEF[q, m, 3]",
            "    partial[tid] = total",
            "    block_tree_sum(partial, tid)",
            "    if tid == 0 and q < COEF.shape[0]:",
            "        E[q] = partial[0]",
            "", ""]


def forces_from_features(kprog: KernelProgram) -> list:
    return [KERNEL, "def forces_from_features(JACQ, incidence, ACC, F):",
            '    """Thread (q, atom A) owns F[q, A] = (J_q^T ACC[q])[A], summed over the (feature, slot)',
            '    pairs that touch atom A."""',
            "    q, A = cuda.grid(2)",
            "    if q >= JACQ.shape[0] or A >= incidence.shape[0]:",
            "        return",
            "    f0 = 0.0", "    f1 = 0.0", "    f2 = 0.0",
            "    for e in range(incidence.shape[1]):",
            "        f = incidence[A, e, 0]",
            "        if f < 0:",
            "            break",
            "        k = incidence[A, e, 1]",
            "        a = ACC[q, f]",
            "        f0 += JACQ[q, f, k, 0] * a",
            "        f1 += JACQ[q, f, k, 1] * a",
            "        f2 += JACQ[q, f, k, 2] * a",
            "    F[q, A, 0] = f0", "    F[q, A, 1] = f1", "    F[q, A, 2] = f2",
            "", ""]


def contract(kprog: KernelProgram) -> list:
    return [KERNEL, "def contract(JAC, atoms, V, B):",
            '    """Thread (m, f) owns B[m, f] = (J(x_m) V[m])[f]: descriptor-space vectors from atom-space',
            '    V (M, N, 3)."""',
            "    m, f = cuda.grid(2)",
            "    if m >= JAC.shape[0] or f >= atoms.shape[0]:",
            "        return",
            "    total = 0.0",
            "    for k in range(atoms.shape[1]):",
            "        a = atoms[f, k]",
            "        total += JAC[m, f, k, 0] * V[m, a, 0] + JAC[m, f, k, 1] * V[m, a, 1] + JAC[m, f, k, 2] * V[m, a, 2]",
            "    B[m, f] = total",
            "", ""]


def permute_features(kprog: KernelProgram) -> list:
    return [KERNEL, "def permute_features(X, fperms, XP):",
            '    """Thread (m, p) owns row m * P + p of XP: XP[m * P + p, f] = X[m, fperms[p, f]]."""',
            "    m, p = cuda.grid(2)",
            "    if m >= X.shape[0] or p >= fperms.shape[0]:",
            "        return",
            "    r = m * fperms.shape[0] + p",
            "    for f in range(X.shape[1]):",
            "        XP[r, f] = X[m, fperms[p, f]]",
            "", ""]


# the model's kernels, in module order (each function above writes one or a few)
MODEL_KERNELS = (block_coefficients, assemble_blocks, pair_coefficients, tree_sums, forces_from_features, contract,
                 permute_features)


def module_source(plan: Plan) -> str:
    """The CUDA module of a model plan (descriptor and kernel together)."""
    if not plan.is_model:
        raise ValueError("the CUDA target compiles models (a descriptor and a kernel together)")
    dir_, dprog, kir, kprog = plan.descriptor, plan.descriptor_program, plan.kernel, plan.kernel_program
    metadata = {**plan.metadata, "target": "cuda"}
    header = [f'"""gdmlc CUDA kernels for {plan.title}', "",
              "Generated by gdmlc from the same IR and rule table as the CPU module; do not edit: it is",
              "rebuilt whenever the DSL source or the compiler changes (the file name carries a hash of",
              'both). Run under NUMBA_ENABLE_CUDASIM=1 to execute it without a GPU."""',
              "import math", "", "import numpy as np", "from numba import cuda, float64", "",
              f"METADATA = {metadata!r}",
              f"KERNEL_PARTIALS = {tuple(kprog.partials)!r}  # the columns of block_coefficients' COEF",
              f"REDUCE_THREADS = {REDUCE_THREADS}  # most threads per block of the tree reductions (a power of two)", "", ""]
    parts = [device_functions(dir_, dprog, kir, kprog), descriptor_kernel(dir_),
             *(kernel(kprog) for kernel in MODEL_KERNELS)]
    return "\n".join(header + [line for part in parts for line in part]).rstrip() + "\n"


TARGET = ModuleTarget("numba_cuda", STYLE, stem_prefix="cuda_", emit=module_source)
