"""BLAS/LAPACK routines that work on sub-blocks of one big matrix, in place.

scipy.linalg.blas/lapack take whole arrays and copy any that are not
contiguous, so they cannot update a panel of a 27000 x 27000 matrix in place.
scipy also exports the raw routines (scipy.linalg.cython_blas/_lapack) as
capsules; calling those through ctypes lets us pass a pointer into the matrix
and its leading dimension, exactly as Fortran code would.  ctypes releases
the GIL for the call, so a progress thread keeps running.
"""
from __future__ import annotations

import ctypes

import numpy as np
import scipy.linalg.cython_blas as _blas
import scipy.linalg.cython_lapack as _lapack

_int_p = ctypes.POINTER(ctypes.c_int)
_dbl_p = ctypes.POINTER(ctypes.c_double)
_chr_p = ctypes.c_char_p

# Argument types of each routine, in Fortran order (everything by reference).
_SIGNATURES = {
    "dpotrf": (_lapack, [_chr_p, _int_p, _dbl_p, _int_p, _int_p]),
    "dtrsm": (_blas, [_chr_p, _chr_p, _chr_p, _chr_p, _int_p, _int_p, _dbl_p, _dbl_p, _int_p,
                      _dbl_p, _int_p]),
    "dgemm": (_blas, [_chr_p, _chr_p, _int_p, _int_p, _int_p, _dbl_p, _dbl_p, _int_p, _dbl_p,
                      _int_p, _dbl_p, _dbl_p, _int_p]),
    "dsyrk": (_blas, [_chr_p, _chr_p, _int_p, _int_p, _dbl_p, _dbl_p, _int_p, _dbl_p, _dbl_p,
                      _int_p]),
}


def _function(name):
    module, argtypes = _SIGNATURES[name]
    capsule = module.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    return ctypes.CFUNCTYPE(None, *argtypes)(address)


_FUNCTIONS = {name: _function(name) for name in _SIGNATURES}


class FortranMatrix:
    """A column-major float64 matrix addressed by (row, column): a Fortran array, or a panel
    of one (a[k:, k:k+b]) whose leading dimension is the parent's column stride."""

    def __init__(self, a: np.ndarray):
        if a.dtype != np.float64 or a.ndim != 2 or not _column_major(a):
            raise ValueError("FortranMatrix needs a 2-D Fortran-contiguous float64 array")
        self.array = a
        self.n_rows = a.shape[0]
        self._base = a.ctypes.data
        self.ld_value = max(1, a.strides[1] // 8, a.shape[0])
        self.ld = ctypes.c_int(self.ld_value)

    def at(self, row: int, col: int):
        """Pointer to element (row, col)."""
        return ctypes.cast(self._base + 8 * (row + col * self.ld_value), _dbl_p)


def _column_major(a: np.ndarray) -> bool:
    """Unit stride down a column, columns at least a column's length apart (BLAS's lda >= m)."""
    if a.flags.f_contiguous:
        return True
    return a.strides[0] == 8 and a.strides[1] % 8 == 0 and a.strides[1] >= 8 * a.shape[0]


def _i(value):
    return ctypes.byref(ctypes.c_int(int(value)))


def _d(value):
    return ctypes.byref(ctypes.c_double(float(value)))


def potrf_lower(A: FortranMatrix, k: int, size: int) -> int:
    """Cholesky of the diagonal block A[k:k+size, k:k+size] (lower); LAPACK info."""
    info = ctypes.c_int(0)
    _FUNCTIONS["dpotrf"](b"L", _i(size), A.at(k, k), ctypes.byref(A.ld), ctypes.byref(info))
    return info.value


def trsm_right_lower_transposed(A: FortranMatrix, k: int, size: int, row: int, n_rows: int):
    """A[row:row+n_rows, k:k+size] <- that block times L^-T, L = A[k:k+size, k:k+size]."""
    _FUNCTIONS["dtrsm"](b"R", b"L", b"T", b"N", _i(n_rows), _i(size), _d(1.0), A.at(k, k),
                        ctypes.byref(A.ld), A.at(row, k), ctypes.byref(A.ld))


def syrk_lower_update(C: FortranMatrix, size: int, A: FortranMatrix, row: int, depth: int):
    """C[:size, :size] (lower) -= P P^T, P = A[row:row+size, :depth] (C, A: panels, maybe one)."""
    _FUNCTIONS["dsyrk"](b"L", b"N", _i(size), _i(depth), _d(-1.0), A.at(row, 0),
                        ctypes.byref(A.ld), _d(1.0), C.at(0, 0), ctypes.byref(C.ld))


def gemm_update(C: FortranMatrix, c_row: int, n_rows: int, n_cols: int, A: FortranMatrix, a_row: int,
                b_row: int, depth: int):
    """C[c_row:+n_rows, :n_cols] -= A[a_row:+n_rows, :depth] A[b_row:+n_cols, :depth]^T."""
    _FUNCTIONS["dgemm"](b"N", b"T", _i(n_rows), _i(n_cols), _i(depth), _d(-1.0), A.at(a_row, 0),
                        ctypes.byref(A.ld), A.at(b_row, 0), ctypes.byref(A.ld), _d(1.0),
                        C.at(c_row, 0), ctypes.byref(C.ld))
