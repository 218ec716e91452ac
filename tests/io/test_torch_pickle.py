"""fm.io.torch_pickle against checkpoints written by torch 2.13 and the arrays torch gave for them.

The fixtures come from experiments/fixtures/torch_pickle_files.py; torch is not needed here.
"""
from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest

from fm.io import torch_pickle

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "torch")
FORMATS = ["ckpt_zip.pt", "ckpt_legacy.pt"]
LOW = {"extras/bf16": "bfloat16", "extras/f8": "float8_e4m3fn"}  # stored as float32 in the npz


def _flatten(obj, prefix=""):
  out = {}
  items = obj.items() if isinstance(obj, dict) else enumerate(obj)
  for k, v in items:
    if isinstance(v, np.ndarray):
      out[f"{prefix}{k}"] = v
    elif isinstance(v, (dict, list)) or (isinstance(v, tuple) and k != "shape"):
      out.update(_flatten(v, f"{prefix}{k}/"))
  return out


@pytest.fixture(scope="module")
def expected():
  with np.load(os.path.join(FIXTURES, "expected.npz")) as z:
    return dict(z)


@pytest.mark.parametrize("name", FORMATS)
def test_arrays_equal_torch(name, expected):
  got = _flatten(torch_pickle.load(os.path.join(FIXTURES, name)))
  assert sorted(got) == sorted(expected)
  for k, want in expected.items():
    a = got[k]
    assert a.shape == want.shape, k
    if k in LOW:
      assert a.dtype.name == LOW[k], k
      a = a.astype(np.float32)
    assert a.dtype == want.dtype, k
    np.testing.assert_array_equal(a, want, err_msg=k)
    assert a.flags.c_contiguous and a.flags.writeable, k


@pytest.mark.parametrize("name", FORMATS)
def test_structure_and_plain_values(name, expected):
  obj = torch_pickle.load(os.path.join(FIXTURES, name))
  assert sorted(obj) == ["ema_model", "extras", "net_model", "optim", "sched", "step"]
  assert obj["step"] == 400000
  assert type(obj["net_model"]).__name__ == "OrderedDict"
  assert list(obj["net_model"]) == [
      "conv.weight", "conv.bias", "norm.weight", "norm.bias", "head.weight", "head.bias"]
  group = obj["optim"]["param_groups"][0]
  assert group["betas"] == (0.9, 0.999) and group["params"] == [0, 1, 2, 3, 4, 5]
  assert obj["optim"]["state"][0]["step"].shape == () and obj["optim"]["state"][0]["step"] == 2
  assert obj["sched"]["lr_lambdas"] == [None] and obj["sched"]["last_epoch"] == 2
  ex = obj["extras"]
  assert ex["shape"] == (2, 3) and ex["bytes"] == b"\x00abc\xff"
  assert ex["scalar"].shape == () and ex["scalar"] == 3.25
  # Views of one storage come back as independent copies.
  ex["shared_a"][...] = 0
  np.testing.assert_array_equal(ex["shared_b"], expected["extras/shared_b"])


def test_state_dict_strips_data_parallel_prefix():
  obj = torch_pickle.load(os.path.join(FIXTURES, "ckpt_zip.pt"))
  net = torch_pickle.state_dict(obj, key="net_model")
  ema = torch_pickle.state_dict(obj, key="ema_model")
  assert all(k.startswith("module.") for k in obj["ema_model"])
  assert list(ema) == list(net) == list(obj["net_model"])
  for k in net:
    np.testing.assert_array_equal(ema[k], obj["ema_model"]["module." + k])
  assert list(torch_pickle.state_dict(obj["net_model"])) == list(net)
  flat = torch_pickle.state_dict({"a": {"b": np.zeros(2)}, "c": np.ones(1)})
  assert sorted(flat) == ["a.b", "c"]
  with pytest.raises(ValueError, match="no key 'model'.*ema_model"):
    torch_pickle.state_dict(obj, key="model")
  with pytest.raises(ValueError, match="'sched.base_lrs' has type list"):
    torch_pickle.state_dict(obj)


def _write_zip(path, pkl: bytes):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pkl)
    z.writestr("archive/byteorder", "little")
  return path


def _write_legacy(path, pkl: bytes):
  head = b"".join(pickle.dumps(x, protocol=2) for x in (
      0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
  with open(path, "wb") as f:
    f.write(head + pkl + pickle.dumps([], protocol=2))
  return path


def _raises(path, match):
  with pytest.raises(ValueError, match=match) as e:
    torch_pickle.load(path)
  msg = str(e.value)
  assert str(path) in msg and msg.endswith(".") and "\n" not in msg
  return msg


@pytest.mark.parametrize("write", [_write_zip, _write_legacy])
def test_refuses_code(tmp_path, write):
  marker = tmp_path / "ran"
  pkl = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()  # os.system("touch ...")
  _raises(write(tmp_path / "evil.pt", pkl), "global 'os.system'")
  assert not marker.exists()
  _raises(write(tmp_path / "eval.pt", b"cbuiltins\neval\n(S'1'\ntR."), "'builtins.eval'")


def test_a_file_cannot_alter_later_loads(tmp_path):
  # BUILD on the object standing for torch.FloatStorage: it must be a fresh one.
  pkl = b"ctorch\nFloatStorage\n}S'dtype'\nS'x'\nsb."
  torch_pickle.load(_write_zip(tmp_path / "build.pt", pkl))
  obj = torch_pickle.load(os.path.join(FIXTURES, "ckpt_zip.pt"))
  assert obj["net_model"]["conv.weight"].dtype == np.float32


def test_not_torch_and_truncated(tmp_path):
  rng = np.random.default_rng(0)
  (tmp_path / "random.pt").write_bytes(rng.bytes(4096))
  _raises(tmp_path / "random.pt", "PyTorch checkpoint")
  (tmp_path / "empty.pt").write_bytes(b"")
  _raises(tmp_path / "empty.pt", "PyTorch checkpoint")
  _raises(_write_legacy(tmp_path / "nomain.pt", b""), "PyTorch checkpoint")
  with open(tmp_path / "plain.pt", "wb") as f:
    pickle.dump({"a": 1}, f)
  _raises(tmp_path / "plain.pt", "magic number")
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
    z.writestr("readme.txt", "hi")
  _raises(tmp_path / "other.zip", "data.pkl")
  with zipfile.ZipFile(os.path.join(FIXTURES, "ckpt_zip.pt")) as src, \
      zipfile.ZipFile(tmp_path / "lost.pt", "w") as dst:
    for info in src.infolist():
      if not info.filename.endswith("/data/0"):
        dst.writestr(info, src.read(info))
  _raises(tmp_path / "lost.pt", "storage '0' is missing")
  for name in FORMATS:
    data = open(os.path.join(FIXTURES, name), "rb").read()
    for n in (len(data) // 2, len(data) - 40):
      (tmp_path / name).write_bytes(data[:n])
      _raises(tmp_path / name, "PyTorch checkpoint")


# --- TorchScript archives (torch.jit.save) -------------------------------------------------------

def test_torchscript_module_tree():
  """tiny_script.pt (experiments/fixtures/fid_torchscript.py): torch.jit.save of a scripted module."""
  obj = torch_pickle.load(os.path.join(FIXTURES, "tiny_script.pt"))
  assert isinstance(obj, torch_pickle.ScriptObject) and obj.type_name == "Tiny"
  layers = obj.attributes["layers"]
  assert layers.type_name == "torch.nn.modules.container.Sequential"
  assert layers.attributes["0"].attributes["padding"] == 1            # int attribute
  assert layers.attributes["2"].attributes["padding"] == [0, 0]       # List[int] (build_intlist)
  got = torch_pickle.state_dict(obj)
  with np.load(os.path.join(FIXTURES, "tiny_script.npz")) as f:
    want = {k: f[k] for k in f.files}
  assert sorted(got) == sorted(want) and len(got) == 8   # torch's own ScriptModule.state_dict() names
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v)


def test_torchscript_objects_are_inert(tmp_path):
  # Calling a __torch__ class with arguments (REDUCE) is refused; NEWOBJ + BUILD of a non-dict too.
  _raises(_write_zip(tmp_path / "call.pt", b"c__torch__.m\nM\n(S'x'\ntR."), "built with arguments")
  _raises(_write_zip(tmp_path / "state.pt", b"c__torch__.m\nM\n)\x81S'x'\nb."), "not a dict")
  # Two loads of one class name get distinct classes: a file cannot change what another sees.
  a = torch_pickle.load(_write_zip(tmp_path / "a.pt", b"c__torch__.m\nM\n)\x81}S'k'\nI1\nsb."))
  b = torch_pickle.load(_write_zip(tmp_path / "b.pt", b"c__torch__.m\nM\n)\x81}b."))
  assert a.attributes == {"k": 1} and b.attributes == {} and type(a) is not type(b)
  assert a.type_name == "m.M"
  # Other torch.jit globals stay refused.
  _raises(_write_zip(tmp_path / "jit.pt", b"ctorch.jit._pickle\nbuild_tensor_from_id\n(I0\ntR."),
          "torch.jit._pickle.build_tensor_from_id")
