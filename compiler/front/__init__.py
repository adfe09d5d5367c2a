"""Front end: DSL source -> IR records.

The parser reads a DSL function's text with ``ast`` (never running it) and hands
analysis and the targets the records of records.py."""
