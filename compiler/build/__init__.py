"""Build: from a DSL function to a loaded, cached module and the objects that call it.

resolve -> parse -> analyse -> emit -> cache (content-hashed files in generated/), and
the compiled descriptor, kernel and model objects; verify checks them against JAX."""
