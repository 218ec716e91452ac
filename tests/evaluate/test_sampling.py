"""`fm.evaluate.sampling.sample`: batches sized to what is asked; samples independent of the batch size."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm import models
from fm.evaluate import sampling


@pytest.mark.parametrize("num,batch,devices,expect", [
    (64, 256, 1, 64), (300, 256, 1, 150), (512, 256, 1, 256), (11, 4, 1, 4), (7, 256, 4, 8),
    (1, 256, 1, 1), (257, 256, 1, 129), (10, 3, 2, 3),   # 3 does not divide over 2 devices: kept
])
def test_batch_size_for(num, batch, devices, expect):
  size = sampling.batch_size_for(num, batch, devices)
  assert size == expect
  batches = -(-num // size)
  assert batches == -(-num // batch)                     # no more batches than asked for
  assert batches * size - num < batches * devices        # padding: under one sample (per device) a batch


def test_num_below_batch_size_integrates_only_num(monkeypatch):
  """`--num 5` with the default batch 256 integrates 5 samples, the same 5 as in batches of 2."""
  model = models.make("mlp", width=8, depth=2)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,)), jnp.zeros((1, 2)))
  shapes = []
  real = sampling.generate

  def counting(model, params, x0, *args, **kw):
    shapes.append(x0.shape[0])
    return real(model, params, x0, *args, **kw)
  monkeypatch.setattr(sampling, "generate", counting)
  x0 = lambda key, n: jax.random.normal(key, (n, 2))
  a, info = sampling.sample(model, params, x0, jax.random.PRNGKey(1), 5, 256, "euler", steps=4, progress=False)
  assert shapes == [5] and info["batch_size"] == 5 and info["nfe_total"] == 4 and a.shape == (5, 2)
  shapes.clear()
  b, info = sampling.sample(model, params, x0, jax.random.PRNGKey(1), 5, 2, "euler", steps=4, progress=False)
  assert shapes == [2, 2, 2] and info["nfe_per_batch"] == [4, 4, 4]
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_png_written_atomically(tmp_path, monkeypatch):
  """A PNG (`--png-dir`, grids) is written beside its name and renamed: a write that fails (a full disk,
  a kill) leaves neither a partial PNG nor its temporary."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from fm.io import files  # pylint: disable=g-import-not-at-top  (the one PNG writer, fm.evaluate.images uses it)
  img = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
  path = str(tmp_path / "000000.png")
  real = Image.Image.save

  def dies_half_way(self, fp, *args, **kw):
    if hasattr(fp, "write"):
      fp.write(b"\x89PNG")
    else:
      with open(fp, "wb") as f:
        f.write(b"\x89PNG")
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(Image.Image, "save", dies_half_way)
  with pytest.raises(OSError):
    files.write_png(path, img)
  assert list(tmp_path.iterdir()) == []
  monkeypatch.setattr(Image.Image, "save", real)
  files.write_png(path, img)
  assert [p.name for p in tmp_path.iterdir()] == ["000000.png"]
