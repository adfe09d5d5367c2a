"""gdmlc compiler: DSL descriptors and kernels → IR → own AD → sympy → Numba (and JAX).

Public API::

    compile_descriptor(fn)       -> CompiledDescriptor (.n_features, .values, .jacobian, .jax_function)
    compile_kernel(fn)           -> CompiledKernel (.value, .gradient, .hessian_vector, .jax_function)
    compile_model(desc, kernel)  -> CompiledModel (.force_block, .jax_force_block, ...)

``fn`` is a DSL function, a library name ("inverse_distances", "matern52")
or "FILE.py:function".
"""
__version__ = "0.1.0"

from compiler.middle import primitives  # noqa: E402,F401 - the rule table fills compiler.middle.ir's registry: import compiler.middle.ir finds it full
from compiler.build.compiled import (CompiledDescriptor, CompiledKernel, CompiledModel,  # noqa: E402
                       compile_descriptor, compile_kernel, compile_model)
from compiler.dsl import descriptor, kernel, neighbours, pairs  # noqa: E402
from compiler.errors import CompileError, DSLError  # noqa: E402

__all__ = ["compile_descriptor", "compile_kernel", "compile_model", "CompiledDescriptor",
           "CompiledKernel", "CompiledModel", "descriptor", "kernel", "pairs", "neighbours",
           "DSLError", "CompileError", "__version__"]
