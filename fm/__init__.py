"""fm: flow matching in JAX.

Submodules by concept: `paths` (probability paths), `couplings` (minibatch
pairings), `methods` (coupling + path = a named method with a loss), `solvers`
(ODE integration with exact NFE), `likelihood` (CNF log-density, bits/dim),
`data`, `models`, `metrics`.
"""
from fm import couplings, data, likelihood, methods, metrics, models, paths, solvers

__all__ = ["couplings", "data", "likelihood", "methods", "metrics", "models", "paths", "solvers"]
__version__ = "0.1.0"
