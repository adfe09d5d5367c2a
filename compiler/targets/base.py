"""What every target receives, and what a target is.

The build pipeline (compiler/build/pipeline.py) parses and analyses DSL functions and hands a
target one :class:`Plan` per generated module; a :class:`Target` spells it as module text from
its column of the primitive table.  The loops a target writes are its own; the formulas it
splices into them come from the plan's kernel structure (compiler/middle/structure.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from compiler.front.records import DescriptorIR, KernelIR
from compiler.middle.analysis import DescriptorProgram, KernelProgram


@dataclass(frozen=True)
class Plan:
    """The analysed descriptor and/or kernel of one generated module.

    Parameter values are not part of it: the generated code reads them at run time, so one
    module serves every parameter table of a descriptor."""
    title: str                     # "descriptor NAME (file:line) and kernel NAME (file:line)"
    metadata: dict                 # the module's METADATA (a target may add its own keys)
    descriptor: DescriptorIR | None = None
    descriptor_program: DescriptorProgram | None = None
    kernel: KernelIR | None = None
    kernel_program: KernelProgram | None = None

    @property
    def is_model(self) -> bool:
        """Both halves: the fused force-field entry points can be emitted."""
        return self.descriptor is not None and self.kernel is not None


@runtime_checkable
class Target(Protocol):
    """A code generator: the plan in, the text of one cached module out."""
    name: str         # in cache keys
    style: str        # the primitive table's spelling column it uses
    stem_prefix: str  # its generated files are <stem_prefix><stem>_<hash>.py

    def module_source(self, plan: Plan) -> str: ...


@dataclass(frozen=True)
class ModuleTarget:
    """A Target whose module text comes from one function of the plan (the Numba targets)."""
    name: str
    style: str
    stem_prefix: str
    emit: Callable[[Plan], str]

    def module_source(self, plan: Plan) -> str:
        return self.emit(plan)
