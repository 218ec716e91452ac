"""Kernel Inception Distance: the unbiased MMD^2 of Inception pool3 features (Bińkowski et al. 2018).

    feats_gen = fid.inception_features(params, samples)     # [N, 2048]
    r = kid.kid(feats_gen, feats_ref)                      # {"mean", "std", "subset_size", "num_subsets"}

Kernel: the cubic polynomial k(x, y) = (x . y / d + 1)^3, d the feature dimension. Estimator:
the unbiased MMD^2 of two samples of m images each,

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2,

which, unlike FID, has no bias in the sample size (it can come out negative). `kid` follows
torch-fidelity's conventions (and clean-fid's defaults): 100 subsets of min(1000, N_x, N_y) images,
each drawn without replacement from each set independently; it reports the mean over subsets and
their standard deviation (numpy std, ddof 0), as torch-fidelity's `kernel_inception_distance_std`.
Subsets overlap when the sets are small, so the std is the spread of one subset's estimate, not
the standard error of the mean. Everything is computed in float64.
"""
from __future__ import annotations

import numpy as np

__all__ = ["polynomial_kernel", "mmd2_unbiased", "kid", "NUM_SUBSETS", "SUBSET_SIZE"]

NUM_SUBSETS = 100
SUBSET_SIZE = 1000


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """`[m, n]` kernel matrix (x . y / d + 1)^3 of features `x` `[m, d]` and `y` `[n, d]`, float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of features `x` `[m, d]` and `y` `[n, d]` (m, n >= 2) under `polynomial_kernel`."""
  m, n = len(x), len(y)
  if m < 2 or n < 2 or np.shape(x)[1:] != np.shape(y)[1:]:
    raise ValueError(f"need two feature sets [m, d], [n, d] with m, n >= 2, got {list(np.shape(x))} and "
                     f"{list(np.shape(y))}")
  kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
               - 2.0 * kxy.mean())


def kid(x: np.ndarray, y: np.ndarray, num_subsets: int = NUM_SUBSETS, subset_size: int = SUBSET_SIZE,
        seed: int = 0) -> dict:
  """KID of features `x` `[N_x, d]` and `y` `[N_y, d]`: mean and std of `mmd2_unbiased` over subsets.

  Subset i takes m = min(subset_size, N_x, N_y) rows of each set without replacement
  (numpy default_rng(seed)). Returns {"mean", "std", "subset_size", "num_subsets"}.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if num_subsets < 1 or subset_size < 2:
    raise ValueError(f"KID needs num_subsets >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}")
  m = min(subset_size, len(x), len(y))
  if m < 2:
    raise ValueError(f"KID needs at least 2 features in each set, got {len(x)} and {len(y)}")
  rng = np.random.default_rng(seed)
  values = np.array([mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
                     for _ in range(num_subsets)])
  return {"mean": float(values.mean()), "std": float(values.std()), "subset_size": int(m),
          "num_subsets": int(num_subsets)}
