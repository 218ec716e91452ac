"""fm: flow matching in JAX.

Submodules by concept: `paths` (probability paths), `couplings` (minibatch
pairings), `methods` (coupling + path = a named method with a loss), `solvers`
(ODE integration with exact NFE), `likelihood` (CNF log-density, bits/dim),
`data`, `models`, `metrics`; `recipe` turns a config into a run and
`experiment` trains and evaluates one (what `fm train` calls).

Submodules are imported on first use (`fm.couplings` imports JAX and SciPy),
so `import fm` and `fm --help` are fast. `import fm` adds one XLA:CPU flag to
`XLA_FLAGS` (faster convolutions on CPU; `fm.xla_cpu` says which and when not).
"""
from __future__ import annotations

import importlib

from fm import xla_cpu as _xla_cpu

_xla_cpu.apply()   # faster CPU convolutions; see fm/xla_cpu.py (opt out: FM_XLA_CPU_DEFAULTS=0)

__all__ = ["couplings", "data", "errors", "experiment", "likelihood", "methods", "metrics", "models", "paths",
           "recipe", "solvers"]
__version__ = "0.1.0"


def __getattr__(name: str):
  if name in __all__:
    module = importlib.import_module(f"fm.{name}")
    globals()[name] = module
    return module
  raise AttributeError(f"module 'fm' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
