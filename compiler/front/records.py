"""The front end's output: what the parser hands to analysis and to every target.

Source records (where a DSL function was written, for messages and for the comments that
quote it in generated code), the descriptor and kernel IR records, and the names the IR uses
for positions, the kernel's reductions and the user's own parameters.  Backends import these
from here, never from the parser.
"""
from __future__ import annotations

from dataclasses import dataclass

from compiler.middle import ir
from compiler.dsl import IndexSpace, Layout, pairs

S, T = "s", "t"  # the kernel's reduction variables


@dataclass
class SourceInfo:
    name: str
    filename: str
    first_line: int
    lines: list       # the function's source lines, as written

    def excerpt(self, lineno):
        k = lineno - self.first_line
        return self.lines[k].rstrip() if 0 <= k < len(self.lines) else ""


@dataclass
class DescriptorIR:
    source: SourceInfo
    over: IndexSpace
    z_args: tuple       # which of 'zi', 'zj' the body uses
    param_names: tuple  # in signature order
    body: ir.Expr       # in the space's variables (ri_0..ri_2, rj_0..rj_2, zi, zj) and params
    body_line: int      # line of the return statement
    layout: Layout = Layout()  # element blocks and cutoff, as declared


@dataclass
class KernelIR:
    source: SourceInfo
    hyper_names: tuple
    hyper_defaults: dict
    body: ir.Expr       # in variables s, t and the hyperparameters
    body_line: int


# a two-atom term's position variables (ri_0 .. rj_2), for tests; compiler code asks its index space
POSITION_VARS = pairs.position_vars
USER_PREFIX = "u_"  # no name the compiler generates starts with it


def user_var(name: str) -> str:
    """The IR (and generated-code) name of a DSL parameter or hyperparameter: prefixed, so
    a user's `ri_0`, `g_s`, `t0` or `math` never collides with the compiler's own names."""
    return USER_PREFIX + name
