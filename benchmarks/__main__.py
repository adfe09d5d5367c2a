"""``python -m benchmarks run [--quick] ...``: gdmlc side by side with sGDML and the JAX approach.

``python -m benchmarks report RUN.json`` re-renders a run's markdown report and plots.
See benchmarks/harness.py for what is measured and how.
"""
from .harness import main

raise SystemExit(main())
