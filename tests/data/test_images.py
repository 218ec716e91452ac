import os
import pathlib
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import fm
from fm.data import folder, images

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def _save(root, rel, arr, mode=None):
  p = pathlib.Path(root, rel)
  p.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(arr, mode).save(p)


def _rgb(seed, h=8, w=6):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _split_folder(root):
  """ds/{train,test}/{cat,dog}/*.png (lossless) plus junk; returns the expected arrays."""
  expect = {"train": ([], []), "test": ([], [])}
  seed = 0
  for split, n in (("train", 3), ("test", 2)):
    for label, cls in enumerate(["cat", "dog"]):   # sorted, as the loader orders them
      for i in range(n):
        a = _rgb(seed)
        seed += 1
        if cls == "dog" and i == 0:    # grayscale: RGB with three equal channels
          _save(root, f"{split}/{cls}/{i:02d}.png", a[..., 0], "L")
          a = np.repeat(a[..., :1], 3, axis=-1)
        elif cls == "dog" and i == 1:  # RGBA: alpha dropped
          rgba = np.concatenate([a, np.full(a.shape[:2] + (1,), 7, np.uint8)], -1)
          _save(root, f"{split}/{cls}/{i:02d}.png", rgba, "RGBA")
        else:
          _save(root, f"{split}/{cls}/{i:02d}.png", a)
        expect[split][0].append(a)
        expect[split][1].append(label)
  pathlib.Path(root, "train/cat/notes.txt").write_text("not an image")
  _save(root, "train/cat/._00.png", _rgb(99))   # macOS metadata twin: skipped
  _save(root, "train/dog/nested/zz.jpg", _rgb(100))   # any depth below the class folder
  return {k: (np.stack(v[0]), np.array(v[1])) for k, v in expect.items()}


def _tar(src_dir, out, arcname, mode="w:gz"):
  with tarfile.open(out, mode) as tf:
    tf.add(src_dir, arcname=arcname)
  return str(out)


def test_folder_and_tarballs_agree_with_written_pixels(tmp_path):
  expect = _split_folder(tmp_path / "ds")
  paths = [str(tmp_path / "ds"),
           _tar(tmp_path / "ds", tmp_path / "ds.tar.gz", "ds"),         # a tarball of the folder
           _tar(tmp_path / "ds", tmp_path / "ds.tar", ".", mode="w")]    # ./train/... members
  for split in ("train", "test"):
    got = [images.load(path=p, split=split, cache_dir=tmp_path / "c")[0] for p in paths]
    arr, meta = images.load(path=paths[0], split=split, cache_dir=tmp_path / "c")
    x, y = expect[split]
    if split == "train":   # the nested jpg sorts last, in dog
      assert arr.shape == (7, 8, 6, 3) and arr.dtype == np.uint8
      arr, labels = arr[:6], meta["labels"][:6]
      assert meta["labels"][6] == 1
    else:
      labels = meta["labels"]
    np.testing.assert_array_equal(arr, x)
    np.testing.assert_array_equal(labels, y)
    assert meta["labels"].dtype == np.int32 and meta["classes"] == ["cat", "dog"]
    for g in got[1:]:
      np.testing.assert_array_equal(g, got[0])
  with pytest.raises(ValueError, match="split 'val' not found.*test, train"):
    images.load(path=paths[1], split="val", cache_dir=tmp_path / "c")


def test_flat_folder_and_layout_errors(tmp_path):
  x = np.stack([_rgb(i) for i in range(3)])
  for i in range(3):
    _save(tmp_path / "flat", f"img{i}.png", x[i])
  arr, meta = images.load(path=tmp_path / "flat", cache_dir=tmp_path / "c")
  np.testing.assert_array_equal(arr, x)
  assert meta["labels"] is None and meta["classes"] is None
  with pytest.raises(ValueError, match="no train/ or test/ folders.*split='test'"):
    images.load(path=tmp_path / "flat", split="test", cache_dir=tmp_path / "c")
  _save(tmp_path / "flat", "cls/a.png", x[0])
  with pytest.raises(ValueError, match="mixes loose images"):
    images.load(path=tmp_path / "flat", cache_dir=tmp_path / "c")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no .png/.jpg/.jpeg images"):
    images.load(path=tmp_path / "empty", cache_dir=tmp_path / "c")
  (tmp_path / "x.zip").write_bytes(b"PK")
  with pytest.raises(ValueError, match="neither a directory nor a tarball"):
    images.load(path=tmp_path / "x.zip", cache_dir=tmp_path / "c")
  with pytest.raises(ValueError, match="does not exist"):
    images.load(path=tmp_path / "nope", cache_dir=tmp_path / "c")
  with pytest.raises(ValueError, match="exactly one of data.path"):
    images.load(cache_dir=tmp_path / "c")
  with pytest.raises(ValueError, match="limit must be a positive int"):
    images.load(path=tmp_path / "flat", limit=0)


def test_mixed_sizes_name_the_first_bad_file(tmp_path):
  _save(tmp_path / "d", "a.png", _rgb(0, 8, 6))
  for i in range(300):   # more than one decoding chunk, so the bad files land in several
    _save(tmp_path / "d", f"b{i:03d}.png", _rgb(1, 8, 6))
  _save(tmp_path / "d", "b250.png", _rgb(2, 5, 4))
  _save(tmp_path / "d", "b120.png", _rgb(2, 4, 5))
  with pytest.raises(ValueError, match=r"'b120.png' is 5x4 but 'a.png' is 6x8"):
    images.load(path=tmp_path / "d", cache_dir=tmp_path / "c")


def test_cache_hit_and_key(tmp_path, monkeypatch):
  _split_folder(tmp_path / "ds")
  tgz = _tar(tmp_path / "ds", tmp_path / "ds.tgz", "ds")
  keys = {}
  for path in (tgz, str(tmp_path / "ds")):
    a, m = images.load(path=path, cache_dir=tmp_path / "c")
    with monkeypatch.context() as mp:
      mp.setattr(folder, "_decode_one", lambda item: 1 / 0)
      b, n = images.load(path=path, cache_dir=tmp_path / "c")
    assert not m["cached"] and n["cached"] and m["key"] == n["key"] and m["sha"] == n["sha"]
    assert a.tobytes() == b.tobytes() and a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(m["labels"], n["labels"])
    assert n["classes"] == ["cat", "dog"] and n["description"] == m["description"]
    keys[path] = m["key"]
  # The folder's key changes when an image is rewritten; the tarball's when it is rebuilt.
  new = _rgb(1234)
  _save(tmp_path / "ds", "train/cat/00.png", new)
  _tar(tmp_path / "ds", tmp_path / "ds.tgz", "ds")
  for path, old in keys.items():
    a2, m2 = images.load(path=path, cache_dir=tmp_path / "c")
    assert m2["key"] != old and not m2["cached"]
    np.testing.assert_array_equal(a2[0], new)
  # split and limit are part of the key (image_size: test_downscale_matches_brute_force)
  keys = {images.load(path=tgz, cache_dir=tmp_path / "c", **kw)[1]["key"]
          for kw in ({}, {"split": "test"}, {"limit": 2})}
  assert len(keys) == 3
  assert images.load(path=tgz, limit=2, cache_dir=tmp_path / "c")[0].shape[0] == 2
  assert sorted(os.listdir(tmp_path / "c"))[0].endswith(".images.npy")   # no temporary left


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("FM_CACHE", str(tmp_path))
  assert images.default_cache_dir() == os.path.join(str(tmp_path), "images")


def test_downscale_matches_brute_force(tmp_path):
  x = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
  for s in (6, 4, 3, 1):
    f = 12 // s
    ref = np.zeros((3, s, s, 3), np.uint8)
    for i in range(s):
      for j in range(s):
        block = x[:, i * f:(i + 1) * f, j * f:(j + 1) * f].astype(np.float64)
        ref[:, i, j] = np.floor(block.mean(axis=(1, 2)) + 0.5)
    np.testing.assert_array_equal(images.downscale(x, s), ref)
  np.testing.assert_array_equal(images.downscale(x, 12), x)
  with pytest.raises(ValueError, match="image_size=5"):
    images.downscale(x, 5)
  for i in range(3):
    _save(tmp_path / "d", f"{i}.png", x[i])
  arr, meta = images.load(path=tmp_path / "d", image_size=4, cache_dir=tmp_path / "c")
  np.testing.assert_array_equal(arr, images.downscale(x, 4))
  assert "4x4" in meta["description"] and "box" in meta["description"]
  full = images.load(path=tmp_path / "d", cache_dir=tmp_path / "c")
  np.testing.assert_array_equal(full[0], x)
  assert full[1]["key"] != meta["key"]
  with pytest.raises(ValueError, match="image_size=5 needs square images"):
    images.load(path=tmp_path / "d", image_size=5, cache_dir=tmp_path / "c")


def test_to_float_and_back():
  k = np.arange(256, dtype=np.uint8)
  x = np.asarray(jax.jit(images.to_float)(k))
  np.testing.assert_array_equal(x, k.astype(np.float32) / np.float32(127.5) - np.float32(1))
  assert x.dtype == np.float32 and x[0] == -1 and x[-1] == 1
  np.testing.assert_array_equal(np.asarray(jax.jit(images.to_uint8)(x)), k)


def _draws(key, n, b):
  """The jax.random draws the batch function is documented to make."""
  k_idx, k_flip, k_x0 = jax.random.split(key, 3)
  return (jax.random.randint(k_idx, (b,), 0, n), jax.random.bernoulli(k_flip, 0.5, (b,)),
          jax.random.normal(k_x0, (b, 4, 6, 3)))


def test_batch_fn_under_jit():
  arr = np.random.default_rng(0).integers(0, 256, (50, 4, 6, 3), dtype=np.uint8)
  data = {"images": jnp.asarray(arr)}
  b = 2048
  # one compilation (threefry is slow to compile on CPU): both variants and the draws
  fn = jax.jit(lambda k, d: (images.image_batches(b, hflip=True)(k, d),
                             images.image_batches(b, hflip=False)(k, d), _draws(k, 50, b)))
  key = jax.random.PRNGKey(3)
  (x0, x1), (y0, y1), (idx, flip, z0) = jax.tree_util.tree_map(np.asarray, fn(key, data))
  assert x1.dtype == np.float32 and x1.shape == (b, 4, 6, 3) and x0.shape == x1.shape
  # numpy: gather, flip along W, k / 127.5 - 1 in float32
  ref = arr[idx].copy()
  ref[flip] = ref[flip][:, :, ::-1, :]
  np.testing.assert_array_equal(x1, ref.astype(np.float32) / np.float32(127.5) - np.float32(1))
  np.testing.assert_array_equal(y1, arr[idx].astype(np.float32) / np.float32(127.5) - np.float32(1))
  np.testing.assert_array_equal(x0, z0)
  np.testing.assert_array_equal(y0, z0)
  assert x1.min() >= -1 and x1.max() <= 1 and x1.min() == -1
  assert len(np.unique(idx)) == 50 and np.bincount(idx).max() < 3 * b / 50
  # flips seen in the output itself: an image differs from its source as stored
  flipped = (x1 != y1).any(axis=(1, 2, 3))
  np.testing.assert_array_equal(flipped, flip)
  assert abs(flipped.mean() - 0.5) < 0.05
  again = fn(key, data)[0][1]
  np.testing.assert_array_equal(np.asarray(again), x1)
  assert not np.array_equal(np.asarray(fn(jax.random.PRNGKey(4), data)[0][1]), x1)
  np.testing.assert_allclose([x0.mean(), x0.std()], [0, 1], atol=0.01)


def test_source(tmp_path):
  _split_folder(tmp_path / "ds")
  tgz = _tar(tmp_path / "ds", tmp_path / "ds.tgz", "ds")
  src = images.source(path=tgz, split="test", batch_size=5, cache_dir=tmp_path / "c")
  assert isinstance(src, fm.data.base.Source) and src.kind == "images" and src.name == "images"
  assert src.shape == (8, 6, 3)
  assert isinstance(src.data["images"], jax.Array) and src.data["images"].dtype == jnp.uint8
  assert src.data["images"].shape == (4, 8, 6, 3)
  x0, x1 = jax.eval_shape(src.batch_fn, jax.random.PRNGKey(0), src.data)   # no compile
  assert x0.shape == x1.shape == (5, 8, 6, 3) and x1.dtype == jnp.float32
  assert jax.eval_shape(lambda k: src.sample_x0(k, 3), jax.random.PRNGKey(0)).shape == (3, 8, 6, 3)
  sha = images.load(path=tgz, cache_dir=tmp_path / "c")[1]["sha"]
  for part in (tgz, "split=test", "N=4", "8x6", sha):
    assert part in src.description
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    images.source(path=tgz, batch_size=0)
  assert fm.data.images is images


def test_tfds_offline_error_is_fast(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  monkeypatch.setattr(images, "_NET", "https://10.255.255.1:9/")   # where TensorFlow is installed
  t = time.perf_counter()
  with pytest.raises(ValueError, match=r"cifar10 is not prepared in .* pass data\.path="):
    images.load(dataset="cifar10", cache_dir=tmp_path / "c")
  assert time.perf_counter() - t < 2.0
  t = time.perf_counter()
  assert not images._network_reachable(timeout=0.5)
  assert time.perf_counter() - t < 1.0
  monkeypatch.setattr(images, "_NET", "https://no-such-host.invalid/")
  assert not images._network_reachable(timeout=0.5)


def test_tfds_prepared_reads_without_tensorflow(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(images, "_tfds_prepared", lambda name, data_dir: True)
  with tfds.testing.mock_data(num_examples=6):
    arr, meta = images.load(dataset="cifar10", cache_dir=tmp_path / "c")
    src = images.load(dataset="cifar10", split="test", limit=4, cache_dir=tmp_path / "c")[0]
  assert arr.shape == (6, 32, 32, 3) and arr.dtype == np.uint8 and src.shape[0] == 4
  assert meta["labels"].dtype == np.int32 and ((meta["labels"] >= 0) & (meta["labels"] < 10)).all()
  assert len(meta["classes"]) == 10 and "tfds:cifar10" in meta["description"]


def _shared_tarball():
  here = pathlib.Path(__file__).resolve()
  for p in (here.parents[3] / "shared/data/cifar10-jpeg.tar.gz",
            pathlib.Path("/work/shared/data/cifar10-jpeg.tar.gz")):
    if p.exists():
      return str(p)
  pytest.skip("the shared CIFAR-10 tarball is not here")


def test_shared_cifar10_tarball_first_images(tmp_path):
  arr, meta = images.load(path=_shared_tarball(), split="test", limit=300, cache_dir=tmp_path)
  assert arr.shape == (300, 32, 32, 3) and arr.dtype == np.uint8
  assert meta["classes"] == CIFAR_CLASSES and (meta["labels"] == 0).all()   # airplanes first
  assert meta["sha"] == "1fab6e733a06cc26af0ccd8cfea06054bfe6fe3f0a1a296b26aac44a058c45ac"


@pytest.mark.slow
def test_shared_cifar10_tarball_full(tmp_path):
  """The README's counts and per-channel statistics (about 10 s to decode 50k JPEGs)."""
  arr, meta = images.load(path=_shared_tarball(), split="train", cache_dir=tmp_path)
  assert arr.shape == (50000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(meta["labels"]), [5000] * 10)
  x = arr.reshape(-1, 3).astype(np.float64)
  np.testing.assert_allclose(x.mean(0), [125.27, 122.93, 113.86], atol=0.006)
  np.testing.assert_allclose(x.std(0), [62.53, 61.91, 66.46], atol=0.006)
  t = time.perf_counter()
  again, m2 = images.load(path=_shared_tarball(), split="train", cache_dir=tmp_path)
  assert m2["cached"] and time.perf_counter() - t < 10 and again.tobytes() == arr.tobytes()


def test_labelled_source_draws_labels_with_the_same_indices(tmp_path):
  expect = _split_folder(tmp_path / "ds")
  src = images.source(path=str(tmp_path / "ds"), split="train", batch_size=64, hflip=False,
                      cache_dir=tmp_path / "c", num_classes=2)
  plain = images.source(path=str(tmp_path / "ds"), split="train", batch_size=64, hflip=False,
                        cache_dir=tmp_path / "c")
  assert src.labelled and not plain.labelled and src.classes == plain.classes == ("cat", "dog")
  assert src.class_probs == pytest.approx((3 / 7, 4 / 7))   # nested/zz.jpg is a fourth dog
  key = jax.random.PRNGKey(0)
  x0, x1, y1 = jax.jit(src.batch_fn)(key, src.data)
  u0, u1 = jax.jit(plain.batch_fn)(key, plain.data)
  np.testing.assert_array_equal(x0, u0)
  np.testing.assert_array_equal(x1, u1)
  idx = np.asarray(_draws(key, 7, 64)[0])
  labels = np.asarray(src.data["labels"])
  np.testing.assert_array_equal(np.asarray(y1), labels[idx])
  np.testing.assert_array_equal(labels[:3], expect["train"][1][:3])
  with pytest.raises(ValueError, match="have 2 classes; set model.num_classes=2"):
    images.source(path=str(tmp_path / "ds"), batch_size=4, cache_dir=tmp_path / "c", num_classes=10)
  flat = tmp_path / "flat"
  _save(flat, "a.png", _rgb(0))
  with pytest.raises(ValueError, match="have no labels"):
    images.source(path=str(flat), batch_size=4, cache_dir=tmp_path / "c", num_classes=2)
def test_undecodable_images_skipped_up_to_one_in_a_thousand(tmp_path):
  """One corrupt image among good ones is skipped and counted (labels stay aligned); more than
  max(1, N // 1000) are refused, naming the first."""
  root = tmp_path / "ds"
  for i in range(6):
    _save(root, f"{'ab'[i % 2]}/{i}.png", _rgb(i))
  (root / "a" / "1x.png").write_bytes(b"not a png")
  arr, meta = images.load(path=root, cache_dir=tmp_path / "c")
  assert meta["skipped"] == ["a/1x.png"] and arr.shape[0] == 6
  np.testing.assert_array_equal(meta["labels"], [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(arr[1], _rgb(2))   # a/0, a/2, a/4 after the skipped a/1x
  assert "skipped_unreadable=1" in meta["description"]
  _, again = images.load(path=root, cache_dir=tmp_path / "c")   # the cached entry keeps the report
  assert again["cached"] and again["skipped"] == ["a/1x.png"]
  (root / "b" / "2x.png").write_bytes(b"nor this")
  with pytest.raises(ValueError, match=r"2 of the 8 images .*first, 'a/1x.png'.*skips at most 1"):
    images.load(path=root, cache_dir=tmp_path / "c")


def test_conversions_are_counted(tmp_path):
  root = tmp_path / "ds"
  _save(root, "0.png", _rgb(0))
  _save(root, "1.png", _rgb(1)[..., 0], "L")
  _save(root, "2.png", np.concatenate([_rgb(2), np.zeros((8, 6, 1), np.uint8)], -1), "RGBA")
  _save(root, "3.png", _rgb(3)[..., 0], "L")
  _, meta = images.load(path=root, cache_dir=tmp_path / "c")
  assert meta["converted"] == {"L": 2, "RGBA": 1}


def test_damaged_cache_entry_is_rebuilt_with_a_notice(tmp_path, caplog):
  root = tmp_path / "ds"
  for i in range(3):
    _save(root, f"{i}.png", _rgb(i))
  first, meta = images.load(path=root, cache_dir=tmp_path / "c")
  npy = [p for p in (tmp_path / "c").iterdir() if p.name.endswith(".images.npy")][0]
  for damage in (lambda b: b[:len(b) // 2], lambda b: b[:-1] + bytes([b[-1] ^ 1])):   # cut short, one bit
    npy.write_bytes(damage(npy.read_bytes()))
    caplog.clear()
    with caplog.at_level("WARNING", logger="fm"):
      arr, meta = images.load(path=root, cache_dir=tmp_path / "c")
    assert not meta["cached"]
    np.testing.assert_array_equal(arr, first)
    notices = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert len(notices) == 1 and npy.name.replace(".images.npy", ".json") in notices[0]
    assert images.load(path=root, cache_dir=tmp_path / "c")[1]["cached"]


def test_cache_dir_under_a_file_is_one_sentence(tmp_path, monkeypatch):
  (tmp_path / "f").write_text("x")
  monkeypatch.setenv("FM_CACHE", str(tmp_path / "f"))
  _save(tmp_path / "ds", "0.png", _rgb(0))
  with pytest.raises(ValueError, match=r"\(from FM_CACHE\) cannot be created: .* is a file"):
    images.load(path=tmp_path / "ds")


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:len(b) // 2], "is not a complete, readable tarball"),
    (lambda b: b[:200], "is not a complete, readable tarball"),
    (lambda b: bytes(len(b)), "no .png/.jpg/.jpeg images found in .*d.tar.gz"),   # zeros: an empty tar
    (lambda b: bytes(range(256)) * 8, "is not a complete, readable tarball"),
    (lambda b: b"text\n" * 50, "is not a complete, readable tarball"),
])
def test_damaged_tarballs_name_the_file(tmp_path, damage, match):
  src = tmp_path / "src"
  for i in range(4):
    _save(src, f"train/{i}.png", _rgb(i))
  tgz = _tar(src, tmp_path / "d.tar.gz", "ds")
  with open(tgz, "rb") as f:
    data = f.read()
  with open(tgz, "wb") as f:
    f.write(damage(data))
  with pytest.raises(ValueError, match=match if "found" in match else f"d.tar.gz' {match}"):
    images.load(path=tgz, cache_dir=tmp_path / "c")


def test_first_decode_is_announced_once(tmp_path, caplog):
  """Decoding (minutes for CIFAR-10 on a CPU) is announced through the log, so it shows with output
  redirected; a cached load is silent."""
  for i in range(3):
    _save(tmp_path / "ds", f"{i}.png", _rgb(i))
  with caplog.at_level("INFO", logger="fm"):
    images.load(path=tmp_path / "ds", cache_dir=tmp_path / "c")
    images.load(path=tmp_path / "ds", cache_dir=tmp_path / "c")
  said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoding ")]
  assert len(said) == 1 and "decoding 3 images of" in said[0] and "cached" in said[0]
