"""FID / KID calibration of the JPEG CIFAR-10 copy: train vs test, train vs train, train vs blurred.

    python experiments/fid/calibration.py --data ../shared/data/cifar10-jpeg.tar.gz --num 1000 \
        --cache /work/cache/fid_features --out experiments/fid/CALIBRATION.md

Sets of `--num` images each, from one random permutation of each split (numpy default_rng(seed)),
so a larger `--num` extends a smaller one and reuses its cached features:
  train_a, train_b  the first and the last `num` of the train split's permutation (disjoint)
  test              the first `num` of the test split's permutation
  train_a_box16     train_a box-downscaled to 16 x 16 (2 x 2 means) and back by pixel repetition,
                    rounded to uint8
Rows: (train_a, test), (train_a, train_b), (train_a, train_a_box16), under both preprocessings.
Each cell: FID of all `num` vs `num` images; the mean and std of FID over `--subsets` disjoint
subset pairs of num / subsets images each; KID (`fm.evaluate.kid`, torch-fidelity conventions:
100 subsets of min(1000, num) images) mean and std.

FID here is computed by `frechet_eigh`: tr (S1 S2)^1/2 as the sum of the square roots of the
eigenvalues of S1^1/2 S2 S1^1/2 (symmetric eigendecompositions), the same quantity as
`fid.frechet_distance` (pytorch-fid's scipy `sqrtm`; tests/evaluate/test_fid.py checks the two
agree), about 10x faster on 2048 x 2048 covariances, which matters on a loaded CPU.

Features are cached per (preprocessing, set) in chunks under `--cache`, so an interrupted run
resumes and nothing is computed twice; the network is the converted default_1.pt at
`fid.default_weights_path()`.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from fm import provenance
from fm.evaluate import fid, kid, records
from fm.data import images as images_lib

CHUNK = 250
PAIRS = (("train_a", "test"), ("train_a", "train_b"), ("train_a", "train_a_box16"))


def box16(x: np.ndarray) -> np.ndarray:
  """`[N, 32, 32, C]` uint8 -> 2 x 2 box means -> repeated back to 32 x 32, rounded."""
  n, h, w, c = x.shape
  small = x.astype(np.float64).reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  return np.clip(np.round(small.repeat(2, axis=1).repeat(2, axis=2)), 0, 255).astype(np.uint8)


def frechet_eigh(mu1, s1, mu2, s2) -> float:
  """|mu1 - mu2|^2 + tr S1 + tr S2 - 2 sum sqrt(eig(S1^1/2 S2 S1^1/2)), in float64."""
  w, v = np.linalg.eigh(s1)
  r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  ev = np.linalg.eigvalsh(r @ s2 @ r)
  d = mu1 - mu2
  return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def image_sets(data: str, num: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  train, _ = images_lib.load(path=data, split="train")
  test, _ = images_lib.load(path=data, split="test")
  perm, tperm = rng.permutation(len(train)), rng.permutation(len(test))
  if 2 * num > len(train) or num > len(test):
    raise ValueError(f"--num {num} needs {2 * num} train and {num} test images")
  sets = {"train_a": train[perm[:num]], "train_b": train[perm[::-1][:num]], "test": test[tperm[:num]]}
  sets["train_a_box16"] = box16(sets["train_a"])
  return sets


def features(params, images: np.ndarray, mode: str, path: str, log) -> np.ndarray:
  """Features of `images` in chunks of CHUNK, each cached as `path`_<start>.npy."""
  out = []
  if len(images) % CHUNK:
    raise ValueError(f"--num must be a multiple of {CHUNK} (cached chunks), got {len(images)}")
  for start in range(0, len(images), CHUNK):
    f = f"{path}_{start:06d}.npy"
    if not os.path.exists(f):
      t0 = time.time()
      feats = fid.inception_features(params, images[start:start + CHUNK], batch_size=50, preprocessing=mode)
      np.save(f + ".tmp.npy", feats)
      os.replace(f + ".tmp.npy", f)
      log(f"{os.path.basename(f)}: {len(feats)} images in {time.time() - t0:.0f} s")
    out.append(np.load(f))
  return np.concatenate(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True)
  parser.add_argument("--num", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--subsets", type=int, default=5)
  parser.add_argument("--cache", default="/work/cache/fid_features")
  parser.add_argument("--out", default=None)
  parser.add_argument("--modes", default="tf,pytorch-fid")
  parser.add_argument("--kid-subsets", type=int, default=kid.NUM_SUBSETS)
  parser.add_argument("--kid-subset-size", type=int, default=kid.SUBSET_SIZE)
  parser.add_argument("--table-only", action="store_true", help="write the table from the rows already computed")
  args = parser.parse_args()
  os.makedirs(args.cache, exist_ok=True)
  log = lambda msg: print(time.strftime("%H:%M:%S"), msg, flush=True)
  sha = records.file_sha256(fid.default_weights_path())
  rows = []
  for mode in args.modes.split(","):
    done = os.path.join(args.cache, f"rows_{mode}_seed{args.seed}_n{args.num}_k{args.subsets}_"
                                    f"kid{args.kid_subsets}x{args.kid_subset_size}.json")
    if os.path.exists(done):   # each mode's rows are kept, so two processes can run the two modes
      with open(done) as f:
        rows += [tuple(r) for r in json.load(f)]
      continue
    if args.table_only:
      raise SystemExit(f"no rows for {mode} yet ({done})")
    sets = image_sets(args.data, args.num, args.seed)
    params = fid.load_inception()
    feats = {name: features(params, x, mode, os.path.join(args.cache, f"{mode}_seed{args.seed}_{name}"), log)
             for name, x in sets.items()}
    for a, b in PAIRS:
      fa, fb = feats[a], feats[b]
      full = frechet_eigh(*fid.statistics(fa), *fid.statistics(fb))
      k = args.subsets
      size = args.num // k if k >= 2 else 0
      sub = [frechet_eigh(*fid.statistics(fa[i * size:(i + 1) * size]),
                          *fid.statistics(fb[i * size:(i + 1) * size])) for i in range(k)] if size else [np.nan] * 2
      kd = kid.kid(fa, fb, num_subsets=args.kid_subsets, subset_size=args.kid_subset_size, seed=args.seed)
      rows.append((mode, a, b, full, float(np.mean(sub)), float(np.std(sub, ddof=1)), size, kd))
      log(f"{mode} {a} vs {b}: FID {full:.2f}; KID {kd['mean']:.5f} ± {kd['std']:.5f}")
    with open(done, "w") as f:
      json.dump([r for r in rows if r[0] == mode], f)
  spread = args.subsets >= 2
  lines = [f"FID and KID of the JPEG CIFAR-10 copy ({os.path.basename(args.data)}) against itself: N = {args.num} "
           f"images per set, seed {args.seed}, Inception {os.path.basename(str(fid.default_weights_path()))} "
           f"(sha256 {sha[:12]}), fm commit {provenance.commit_label()}. KID × 1e3: mean ± std over "
           f"{args.kid_subsets} subsets of {min(args.kid_subset_size, args.num)} images.", "",
           "| preprocessing | set 1 | set 2 | FID (N vs N) |"
           + (f" FID of {args.subsets} disjoint subset pairs (mean ± std) |" if spread else "") + " KID × 1e3 |",
           "|---|---|---|---|" + ("---|" if spread else "") + "---|"]
  for mode, a, b, full, m, s, size, kd in rows:
    lines.append(f"| {mode} | {a} | {b} | {full:.2f} |" + (f" {m:.2f} ± {s:.2f} |" if spread else "")
                 + f" {1e3 * kd['mean']:.2f} ± {1e3 * kd['std']:.2f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
