"""Seeded random FID-Inception weights and test images, the same under torch and under JAX.

Imported by the fixture script (experiments/fixtures/pytorch_fid_inception.py, run with torch
and pytorch-fid) and by tests/evaluate/test_fid.py (no torch), so the 95 MB state dict is
regenerated rather than committed. Numpy only.

Each tensor comes from its own generator seeded by (seed, crc32(name)), so the result does
not depend on the order of names. Conv weights are He-scaled (variance 2 / fan_in) and the
BatchNorm affine and running statistics stay near the identity, so activations stay O(1)
through all 94 layers.
"""
from __future__ import annotations

import zlib

import numpy as np

__all__ = ["random_state_dict", "seeded_images", "IMAGE_SIZES"]

IMAGE_SIZES = ((32, 32), (320, 320), (48, 64))  # below, above and off the 299 x 299 input


def _tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  if name.endswith("num_batches_tracked"):
    return np.zeros(shape, np.int64)
  if name.endswith("conv.weight"):
    fan_in = int(np.prod(shape[1:]))
    x = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
  elif name.endswith("bn.weight"):
    x = rng.uniform(0.8, 1.2, shape)
  elif name.endswith("bn.bias"):
    x = rng.uniform(-0.1, 0.2, shape)
  elif name.endswith("running_mean"):
    x = rng.normal(0.0, 0.1, shape)
  elif name.endswith("running_var"):
    x = rng.uniform(0.6, 1.6, shape)
  else:  # fc.weight, fc.bias: unused by the features
    x = rng.normal(0.0, 0.01, shape)
  return x.astype(np.float32)


def random_state_dict(spec: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
  """{name: array} for `spec` {torch state-dict name: shape}."""
  return {name: _tensor(name, tuple(shape), seed) for name, shape in spec.items()}


def seeded_images(seed: int = 0, batch: int = 2) -> dict[tuple[int, int], np.ndarray]:
  """{(H, W): uint8 `[batch, H, W, 3]`} for each of IMAGE_SIZES: smooth-ish random images."""
  rng = np.random.default_rng(seed)
  out = {}
  for h, w in IMAGE_SIZES:
    coarse = rng.uniform(0, 255, (batch, h // 8 + 2, w // 8 + 2, 3))
    noise = rng.uniform(-40, 40, (batch, h, w, 3))
    up = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :h, :w]
    out[(h, w)] = np.clip(up + noise, 0, 255).astype(np.uint8)
  return out
