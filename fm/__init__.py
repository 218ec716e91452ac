"""fm: flow matching in JAX.

Submodules by concept: `paths` (probability paths), `couplings` (minibatch
pairings), `methods` (coupling + path = a named method with a loss), `solvers`
(ODE integration with exact NFE), `data`, `models`, `metrics`.
"""
from fm import couplings, data, methods, metrics, models, paths, solvers

__all__ = ["couplings", "data", "methods", "metrics", "models", "paths", "solvers"]
__version__ = "0.1.0"
