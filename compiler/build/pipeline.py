"""The one build pipeline: resolve -> parse -> analyse -> plan -> emit -> cache.

Every compiled face (compile_descriptor, compile_kernel, compile_model in compiled.py, the
CUDA model in cuda_compiled.py) goes through here.  Parsing and analysis are memoised per DSL
function (its source, the module numbers it reads, its index space, the names of its
parameters, where it was written), so the CPU and CUDA modules of one pair parse and analyse
once.  Analysis runs only when a target has to emit a module that is not cached yet.

A module's cache key is what its text depends on: the target, and each function's source
key.  Parameter values are not in it: the generated code reads them at run time
(``params[c]``), so descriptors differing only in their values share one module.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from compiler.build import cache
from compiler.dsl import DSLFunction
from compiler.errors import DSLError
from compiler.front.parser import module_constants, parse_descriptor, parse_kernel
from compiler.front.records import DescriptorIR, KernelIR, user_var
from compiler.library import resolve
from compiler.middle.analysis import descriptor_program, kernel_program
from compiler.targets.base import Plan, Target

__all__ = ["Plan", "Parsed", "Built", "front", "parse", "build", "plan", "params_table", "source_key",
           "descriptor_metadata", "kernel_metadata"]

MEMO_SIZE = 256  # parsed DSL functions kept (a long session compiling many files stays bounded)


# --------------------------------------------------------------------------- resolve, parse

@dataclass(eq=False)
class Parsed:
    """One DSL function's IR, and its analysis on first use: shared by every compilation of the
    same source (this function's parameter values are not here; see params_table)."""
    kind: str                        # 'descriptor' or 'kernel'
    ir: DescriptorIR | KernelIR
    key: tuple                       # source_key: what generated text of it depends on

    name = property(lambda self: self.ir.source.name)

    @cached_property
    def program(self):
        """The analysis (DescriptorProgram or KernelProgram): AD, sympy, the s = 0 guards."""
        return descriptor_program(self.ir) if self.kind == "descriptor" else kernel_program(self.ir)

    @property
    def title(self) -> str:
        source = self.ir.source
        return f"{self.kind} {source.name} ({source.filename}:{source.first_line})"

    def metadata(self) -> dict:
        make = descriptor_metadata if self.kind == "descriptor" else kernel_metadata
        return make(self.ir, self.program)


_PARSED: OrderedDict = OrderedDict()
_PARSED_LOCK = threading.Lock()


def front(spec, kind: str):
    """(DSLFunction, Parsed) for a DSL function, a library name or 'FILE.py:func'."""
    dsl = resolve(spec, kind)
    return dsl, parse(dsl)


def parse(dsl: DSLFunction) -> Parsed:
    """The parsed function, memoised (errors are raised every time, never remembered)."""
    key = source_key(dsl)
    memo_key = (key, dsl.filename, _first_line(dsl))
    with _PARSED_LOCK:
        found = _PARSED.get(memo_key)
        if found is not None:
            _PARSED.move_to_end(memo_key)
            return found
    ir = parse_descriptor(dsl) if dsl.kind == "descriptor" else parse_kernel(dsl)
    parsed = Parsed(dsl.kind, ir, key)
    with _PARSED_LOCK:
        parsed = _PARSED.setdefault(memo_key, parsed)  # a racing thread's copy wins: one analysis
        while len(_PARSED) > MEMO_SIZE:
            _PARSED.popitem(last=False)
    return parsed


def _first_line(dsl: DSLFunction):
    """Where the function starts in its file (messages and generated comments quote it)."""
    if dsl.stored:
        return dsl.stored.first_line
    code = getattr(dsl.fn, "__code__", None)
    return code.co_firstlineno if code is not None else None


def source_key(dsl: DSLFunction) -> tuple:
    """Everything the generated text of a DSL function depends on: its source, the module
    numbers it reads, its index space and which arguments are parameters (not their values)."""
    constants = tuple(sorted(module_constants(dsl.fn).items()))
    return (dsl.kind, dsl.source, constants, None if dsl.over is None else dsl.over.name,
            tuple(sorted(dsl.params)), dsl.layout)


def params_table(dsl: DSLFunction, dir_: DescriptorIR) -> np.ndarray:
    """(channels, n_params) table: lists give one channel each, numbers broadcast; a declared
    cutoff is checked against these values."""
    table = _params_values(dsl, dir_)
    _check_cutoff(dsl, dir_, table)
    return table


def _params_values(dsl: DSLFunction, dir_: DescriptorIR) -> np.ndarray:
    def error(message):  # the decorator line, where params were written
        return DSLError(f"descriptor {dsl.name}: {message}", dir_.source.filename,
                        dir_.source.first_line, 1, "give each parameter a finite number or a list of "
                        "them; all lists of the same length")

    try:
        columns = [np.atleast_1d(np.asarray(dsl.params[p], dtype=np.float64)) for p in dir_.param_names]
    except (TypeError, ValueError):
        raise error("parameters must be numbers or lists of numbers") from None
    lengths = {len(c) for c in columns if len(c) > 1}
    if len(lengths) > 1:
        raise error(f"parameter lists have different lengths {dict(zip(dir_.param_names, map(len, columns)))}")
    channels = lengths.pop() if lengths else 1
    if not columns:
        return np.zeros((1, 0))
    if not all(c.ndim == 1 and c.size and np.all(np.isfinite(c)) for c in columns):
        raise error("parameters must be finite numbers or non-empty flat lists of them")
    return np.stack([np.broadcast_to(c, (channels,)) for c in columns], axis=1).copy()


def _check_cutoff(dsl: DSLFunction, dir_: DescriptorIR, table: np.ndarray):
    """A declared cutoff lets the loops skip terms: they must vanish there, gradients included,
    for every channel's parameter values (the JAX reference skips nothing)."""
    cutoff = dir_.layout.cutoff
    if cutoff is None:
        return
    channels = [{user_var(p): row[k] for k, p in enumerate(dir_.param_names)} for row in table]
    if not dir_.over.term_vanishes_beyond(dir_.body, cutoff, channels):
        raise DSLError(f"descriptor {dsl.name}: cutoff={cutoff:g} is declared, but the term or its gradient "
                       f"is not zero once a neighbour is {cutoff:g} Å or farther from the centre",
                       dir_.source.filename, dir_.source.first_line, 1,
                       "multiply the term by a cutoff function that is zero there, e.g. "
                       "where(r < rc, 0.5 * (cos(pi * r / rc) + 1), 0.0), or drop cutoff=")


# --------------------------------------------------------------------------- analyse, plan

def descriptor_metadata(dir_, prog) -> dict:
    return {"descriptor": dir_.source.name, "descriptor_file": dir_.source.filename,
            "descriptor_line": dir_.source.first_line, "over": dir_.over.name,
            "elements": list(dir_.layout.elements), "cutoff": dir_.layout.cutoff,
            "symmetric": prog.symmetric,
            "descriptor_ops": [prog.term.ops_before, prog.term.ops_after],
            "descriptor_notes": list(prog.term.notes)}


def kernel_metadata(kir, prog) -> dict:
    return {"kernel": kir.source.name, "kernel_file": kir.source.filename,
            "kernel_line": kir.source.first_line, "present": prog.present, "guards": prog.guards,
            "uses": list(prog.uses),
            "kernel_ops": [prog.coefficients.ops_before, prog.coefficients.ops_after],
            "kernel_value_ops": [prog.value.ops_before, prog.value.ops_after],
            "kernel_notes": list(prog.coefficients.notes) + list(prog.value.notes),
            # Hessian prediction: the columns hessian_coefficients writes, or why there is none
            "hessian_columns": (None if prog.hessian is None
                                else [name for name, _ in prog.structure.prediction_columns]),
            "hessian_refusal": prog.hessian_refusal,
            # training on Hessians: the columns observation_coefficients writes, or why there is none
            "observation_columns": (None if prog.observation is None
                                    else [name for name, _ in prog.structure.observation_columns]),
            "observation_refusal": prog.observation_refusal}


def plan(descriptor: Parsed | None = None, kernel: Parsed | None = None) -> Plan:
    """What a target receives for a descriptor, a kernel, or both (analysing them if needed)."""
    parts = [p for p in (descriptor, kernel) if p is not None]
    metadata = {}
    for part in parts:
        metadata.update(part.metadata())
    return Plan(title=" and ".join(p.title for p in parts), metadata=metadata,
                descriptor=descriptor and descriptor.ir, descriptor_program=descriptor and descriptor.program,
                kernel=kernel and kernel.ir, kernel_program=kernel and kernel.program)


# --------------------------------------------------------------------------- emit, cache

class Built(NamedTuple):
    module: object     # the loaded generated module
    path: object       # its file in generated/
    built_now: bool    # written by this call (else found in the cache)
    seconds: float


def module_stem(descriptor: Parsed | None, kernel: Parsed | None) -> str:
    """descriptor_<name>, kernel_<name> or model_<descriptor>_<kernel> (a target prefixes it)."""
    if descriptor is not None and kernel is not None:
        return f"model_{descriptor.name}_{kernel.name}"
    part = descriptor if descriptor is not None else kernel
    return f"{part.kind}_{part.name}"


def build(target: Target, descriptor: Parsed | None = None, kernel: Parsed | None = None) -> Built:
    """The target's generated module for the parsed functions: from the cache, else planned,
    emitted and written there."""
    parts = [p for p in (descriptor, kernel) if p is not None]
    key = cache.content_hash(target.name, *(p.key for p in parts))
    stem = target.stem_prefix + module_stem(descriptor, kernel)
    start = time.perf_counter()
    module, path, built = cache.get_or_build(stem, key, lambda: target.module_source(plan(descriptor, kernel)))
    return Built(module, path, built, time.perf_counter() - start)
