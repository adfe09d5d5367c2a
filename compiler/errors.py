"""Errors the compiler raises, each pointing at the place that caused it."""


class DSLError(SyntaxError):
    """A DSL function uses something outside the supported subset.

    The message names file, line and column, the offending construct and what
    to write instead, in the form ``file.py:12:8: <what> -- <what to do>``.
    """

    def __init__(self, message, filename="<dsl>", lineno=0, col=0, hint=""):
        self.dsl_message = message
        self.hint = hint
        text = f"{filename}:{lineno}:{col}: {message}"
        if hint:
            text += f" -- {hint}"
        super().__init__(text)
        self.filename, self.lineno, self.offset = filename, lineno, col

    def __str__(self):
        return self.args[0]


class CompileError(RuntimeError):
    """A DSL function parsed, but cannot be compiled (e.g. a kernel that is not
    twice differentiable where d = d')."""
