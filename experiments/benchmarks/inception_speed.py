"""Inception (FID) features per second on this machine's default JAX device.

  python experiments/benchmarks/inception_speed.py --num 100 --batch-size 50

Random weights (Flax init: the speed does not depend on the values), uint8
32x32 images resized to 299 as `fid.inception_features` does. The first batch
(compilation) is timed separately; the rate is over `--num` further images.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fm.evaluate import fid, inception


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num", type=int, default=100)
  parser.add_argument("--batch-size", type=int, default=50)
  parser.add_argument("--size", type=int, default=32)
  args = parser.parse_args(argv)
  params = jax.jit(inception.InceptionV3().init)(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
  images = np.random.default_rng(0).integers(0, 256, (args.num, args.size, args.size, 3), dtype=np.uint8)
  t0 = time.time()
  fid.inception_features(params, images[:args.batch_size], batch_size=args.batch_size)
  compile_s = time.time() - t0
  t0 = time.time()
  feats = fid.inception_features(params, images, batch_size=args.batch_size)
  run_s = time.time() - t0
  assert feats.shape == (args.num, 2048)
  dev = jax.devices()[0]
  print(f"{args.num / run_s:.2f} images/s ({args.num} images {args.size}x{args.size} in batches of "
        f"{args.batch_size}, {run_s:.1f} s; first batch incl. compilation {compile_s:.1f} s) on "
        f"{dev.platform}:{dev.device_kind}, {os.cpu_count()} CPUs visible, load average "
        f"{os.getloadavg()[0]:.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
