"""XLA:CPU settings that make fm's image networks faster on CPU, applied on `import fm`.

jaxlib 0.10 hands convolutions and matmuls on the CPU to YNNPACK fusions by
default. For the UNet's 3x3 convolutions, XLA's own (Eigen) kernels are faster:
measured on a 2-core CPU for TorchCFM's tiny UNet at batch 32, the forward pass
takes 0.14 s instead of 0.24 s and a gradient 0.61 s instead of 0.76 s
(`experiments/benchmarks/unet_vs_torchcfm.py`). So, before JAX starts its CPU
backend, fm adds

  --xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot

to `XLA_FLAGS`. It changes no result beyond float32 rounding, touches only the
CPU backend, and is skipped when

- `FM_XLA_CPU_DEFAULTS=0` is set,
- `XLA_FLAGS` already names that flag (yours wins),
- jaxlib is not a 0.10 release (the flag is experimental; an unknown XLA flag
  aborts the process, so it is never guessed for other versions), or
- JAX's backends are already initialised (XLA reads `XLA_FLAGS` once).
"""
from __future__ import annotations

import os
import sys

__all__ = ["FLAG", "apply"]

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"
_NAME = FLAG.split("=")[0]
_VERSIONS = ("0.10.",)


def _backends_started() -> bool:
  xb = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(xb, "_backends", None))


def apply(environ=os.environ) -> bool:
  """Adds `FLAG` to `environ["XLA_FLAGS"]` unless one of the conditions above holds; True if added."""
  if environ.get("FM_XLA_CPU_DEFAULTS", "1") == "0" or _NAME in environ.get("XLA_FLAGS", ""):
    return False
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    version = metadata.version("jaxlib")
  except Exception:  # pylint: disable=broad-except
    return False
  if not version.startswith(_VERSIONS) or _backends_started():
    return False
  environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " " + FLAG).strip()
  return True
