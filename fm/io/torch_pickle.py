"""Read PyTorch checkpoints (`.pt` / `.pth`) without torch, tensors as numpy arrays.

    obj = torch_pickle.load("otcfm_cifar10_weights_step_400000.pt")
    sd = torch_pickle.state_dict(obj, key="ema_model")   # {name: np.ndarray}

Both on-disk formats of `torch.save` are read:

* zip (the default since torch 1.6): `<root>/data.pkl` is the pickle, `<root>/data/<key>`
  the raw bytes of each storage, `<root>/byteorder` ("little" or "big", absent = little).
* legacy (`_use_new_zipfile_serialization=False`): pickles of the magic number, the protocol
  version and a sys-info dict, then the main pickle, then the list of storage keys, then for
  each key an int64 element count followed by the storage's raw bytes.

The pickle names storages through persistent ids `("storage", storage_type, key, location,
numel[, view_metadata])` and builds tensors with `torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, ...)` (`_rebuild_tensor_v3(untyped_storage, ..., dtype)` for dtypes
without a storage class: uint16/32/64, float8). A restricted unpickler resolves only those
rebuild functions, storage classes, `collections.OrderedDict`, `torch.Size`, torch dtypes and
a few harmless builtins (set, frozenset, complex, bytearray); any other global is refused with
a ValueError naming it, so loading never runs code chosen by the file.

Each tensor becomes its own C-contiguous copy (views of one storage no longer share memory);
parameters become plain arrays; bfloat16 tensors keep their bits as `ml_dtypes.bfloat16`
(the dtype JAX uses, so `jnp.asarray` takes them as they are). Tensors on any device
(location "cuda:0" etc.) load on the host. Peak memory is about twice the file's size.

TorchScript archives (`torch.jit.save`, e.g. NVIDIA's `inception-2015-12-05.pt`) are the
same zip with `code/` beside `data.pkl`; their pickle builds `__torch__.<module path>` objects
(NEWOBJ, then BUILD with a dict of attributes). Those globals resolve to `ScriptObject`, an
inert record of the class name and the attribute dict: nothing in `code/` is read or run.
`state_dict` flattens a tree of them like nested dicts ("net.layers.conv.weight").

TorchCFM's CIFAR-10 checkpoints (examples/images/cifar10/train_cifar10.py) hold
`{"net_model", "ema_model", "sched", "optim", "step"}`; the EMA weights used for FID are
`state_dict(obj, key="ema_model")`, whose names lose the "module." prefix that training with
DataParallel / DistributedDataParallel adds.
"""
from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Dict, Mapping, Optional

import ml_dtypes
import numpy as np

__all__ = ["load", "state_dict", "ScriptObject", "DTYPES"]

# Legacy storage class name -> numpy dtype.
_STORAGES = {
  "FloatStorage": np.dtype(np.float32),
  "DoubleStorage": np.dtype(np.float64),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
  "ComplexFloatStorage": np.dtype(np.complex64),
  "ComplexDoubleStorage": np.dtype(np.complex128),
}

# torch dtype name (as pickled: `torch.float32` is the global "torch float32") -> numpy dtype.
DTYPES = {
  "float32": np.dtype(np.float32), "float": np.dtype(np.float32),
  "float64": np.dtype(np.float64), "double": np.dtype(np.float64),
  "float16": np.dtype(np.float16), "half": np.dtype(np.float16),
  "bfloat16": np.dtype(ml_dtypes.bfloat16),
  "int64": np.dtype(np.int64), "long": np.dtype(np.int64),
  "int32": np.dtype(np.int32), "int": np.dtype(np.int32),
  "int16": np.dtype(np.int16), "short": np.dtype(np.int16),
  "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8),
  "uint16": np.dtype(np.uint16), "uint32": np.dtype(np.uint32), "uint64": np.dtype(np.uint64),
  "bool": np.dtype(np.bool_),
  "complex64": np.dtype(np.complex64), "complex128": np.dtype(np.complex128),
  "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
  "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
}

_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_PROTOCOL = 1001                  # torch.serialization.PROTOCOL_VERSION


class _Refused(Exception):
  """Raised inside unpickling; turned into a ValueError naming the file."""


class _StorageType:
  """Stands for `torch.FloatStorage` etc. in the pickle: carries the element dtype."""

  def __init__(self, name: str, dtype: np.dtype):
    self.name, self.dtype = name, dtype


class _Storage:
  """A storage's bytes `[nbytes]` uint8 (None while unknown) and the dtype it was saved with."""

  def __init__(self, data: Optional[np.ndarray], dtype: np.dtype):
    self.data, self.dtype = data, dtype


def _rebuild(storage, offset, size, stride, dtype=None):
  """The tensor `storage[offset + sum_i idx_i * stride_i]`, `[*size]`, as a fresh array."""
  if not isinstance(storage, _Storage):
    raise _Refused(f"a tensor is built from {type(storage).__name__}, not a storage")
  if storage.data is None:  # the first pass over a legacy file
    return None
  if dtype is not None and not isinstance(dtype, _Marker):
    raise _Refused(f"a tensor has dtype {str(dtype)[:40]}, not a torch dtype")
  dtype = storage.dtype if dtype is None else dtype.value
  size, stride, offset = tuple(int(n) for n in size), tuple(int(s) for s in stride), int(offset)
  if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
    raise _Refused(f"a tensor has size {size}, stride {stride}, offset {offset}")
  flat = storage.data[: storage.data.size // dtype.itemsize * dtype.itemsize].view(dtype)
  if 0 in size:
    return np.zeros(size, dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise _Refused(f"a tensor reads element {last} of a storage of {flat.size}")
  strides = tuple(s * dtype.itemsize for s in stride)
  return np.lib.stride_tricks.as_strided(flat[offset:], size, strides, writeable=False).copy()


def _rebuild_tensor(storage, offset, size, stride):
  return _rebuild(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
  del requires_grad, hooks, metadata
  return _rebuild(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype,
                       metadata=None):
  del requires_grad, hooks, metadata
  return _rebuild(storage, offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
  del requires_grad, hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  """A tensor (sub)class with Python attributes: keep the array, drop the attributes."""
  del new_type, state
  return func(*args)


def _typed_list(value):
  if not isinstance(value, list):
    raise _Refused(f"a TorchScript typed list is built from {type(value).__name__}")
  return value


class _Marker:
  """Stands for a torch class or dtype the pickle names, e.g. `torch.Tensor`, `torch.float32`."""

  def __init__(self, value: Any = None):
    self.value = value


class ScriptObject:
  """A TorchScript module object of the pickle: its class `type_name` and its `attributes`.

  `type_name` is the qualified name after "__torch__." (e.g. "inceptionv3.Conv2dLayer");
  `attributes` maps each attribute to its unpickled value (arrays, numbers, other objects).
  """

  type_name: str = ""

  def __init__(self, *args):
    if args:
      raise _Refused(f"the TorchScript object {self.type_name} is built with arguments")
    self.attributes: Dict[str, Any] = {}

  def __setstate__(self, state):
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
      raise _Refused(f"the TorchScript object {self.type_name} has state {type(state).__name__}, "
                     "not a dict of attributes")
    self.attributes = dict(state)

  def __repr__(self):
    return f"ScriptObject({self.type_name}, {sorted(self.attributes)})"


def _script_class(qualname: str) -> type:
  """A fresh subclass of `ScriptObject` naming one `__torch__` class (one per lookup)."""
  return type("ScriptObject", (ScriptObject,), {"type_name": qualname, "__module__": __name__})


def _fresh(fn: Callable) -> Callable[[], Any]:
  """A factory of new wrappers of `fn`, so that a pickle's BUILD can never alter `fn` itself."""
  return lambda: functools.partial(fn)


# (module, name) -> factory of the object that stands for it; each lookup gets a new object
# (the classes here are immutable builtins), so a file cannot change state seen by later loads.
_GLOBALS: Dict[tuple, Callable[[], Any]] = {
  ("torch._utils", "_rebuild_tensor"): _fresh(_rebuild_tensor),
  ("torch._utils", "_rebuild_tensor_v2"): _fresh(_rebuild_tensor_v2),
  ("torch._utils", "_rebuild_tensor_v3"): _fresh(_rebuild_tensor_v3),
  ("torch._utils", "_rebuild_parameter"): _fresh(_rebuild_parameter),
  ("torch._utils", "_rebuild_parameter_with_state"): _fresh(_rebuild_parameter),
  ("torch._tensor", "_rebuild_from_type_v2"): _fresh(_rebuild_from_type_v2),
  ("torch", "Tensor"): _Marker,
  ("torch.nn.parameter", "Parameter"): _Marker,
  ("torch", "Size"): lambda: tuple,
  ("collections", "OrderedDict"): lambda: collections.OrderedDict,
  ("builtins", "set"): lambda: set,
  ("builtins", "frozenset"): lambda: frozenset,
  ("builtins", "complex"): lambda: complex,
  ("builtins", "bytearray"): lambda: bytearray,
  ("__builtin__", "set"): lambda: set,
  ("_codecs", "encode"): _fresh(lambda s, enc="utf-8": s.encode(enc)),  # bytes, protocol 2
  ("torch.jit._pickle", "restore_type_tag"): _fresh(lambda value, type_str: value),
}
# TorchScript's typed lists (List[int] etc.): the list itself.
for _name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist"):
  _GLOBALS[("torch.jit._pickle", _name)] = _fresh(_typed_list)
_GLOBALS[("torch.storage", "UntypedStorage")] = _GLOBALS[("torch", "UntypedStorage")] = (
    lambda: _StorageType("UntypedStorage", np.dtype(np.uint8)))  # bytes; v3 gives the dtype
for _name, _dt in _STORAGES.items():
  _GLOBALS[("torch", _name)] = _GLOBALS[("torch.cuda", _name)] = (
      lambda n=_name, d=_dt: _StorageType(n, d))
for _name, _dt in DTYPES.items():
  _GLOBALS[("torch", _name)] = lambda d=_dt: _Marker(d)


class _Unpickler(pickle.Unpickler):
  """Resolves only `_GLOBALS`; storages come from `get(key, storage_type, numel)`."""

  def __init__(self, f, get: Optional[Callable[[str, _StorageType, int], _Storage]]):
    super().__init__(f)
    self._get = get

  def find_class(self, module, name):
    if module == "__torch__" or module.startswith("__torch__."):
      return _script_class(f"{module[len('__torch__.'):]}.{name}".lstrip("."))
    try:
      return _GLOBALS[(module, name)]()
    except KeyError:
      raise _Refused(f"it references the global '{module}.{name}', which is not a tensor, "
                     "storage or plain container and is refused") from None

  def persistent_load(self, pid):
    if self._get is None:
      raise _Refused("a persistent id appears where none is expected")
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
        or not isinstance(pid[1], _StorageType)):
      raise _Refused(f"it has an unknown persistent id {str(pid)[:80]}")
    view = pid[5] if len(pid) == 6 else None
    root = self._get(str(pid[2]), pid[1], int(pid[4]))
    if view is None or root.data is None:
      return root
    _, start, n = view  # a view of the root storage, in elements (torch < 1.0)
    k = pid[1].dtype.itemsize
    return _Storage(root.data[int(start) * k:(int(start) + int(n)) * k], root.dtype)


def _bytes_storage(raw: bytes, st: _StorageType, numel: int, big: bool) -> _Storage:
  """Checks the byte count and brings big-endian data to native order."""
  nbytes = numel * st.dtype.itemsize
  if len(raw) < nbytes:
    raise _Refused(f"a storage holds {len(raw)} bytes where {numel} {st.name} elements need "
                   f"{nbytes}")
  data = np.frombuffer(raw, np.uint8, nbytes)
  w = st.dtype.itemsize // (2 if st.dtype.kind == "c" else 1)  # complex: swap each part
  if big and w > 1:
    data = data.reshape(-1, w)[:, ::-1].reshape(-1)
  return _Storage(data, st.dtype)


def _load_zip(zf: zipfile.ZipFile) -> Any:
  names = zf.namelist()
  pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
  if len(pkl) != 1:
    raise _Refused("it is a zip without exactly one '<root>/data.pkl'")
  root = pkl[0][: -len("data.pkl")]
  big = (root + "byteorder" in names
         and zf.read(root + "byteorder").strip() == b"big")
  cache: Dict[str, _Storage] = {}

  def get(key, st, numel):
    if key not in cache:
      name = f"{root}data/{key}"
      if name not in names:
        raise _Refused(f"the storage '{key}' is missing from the zip")
      cache[key] = _bytes_storage(zf.read(name), st, numel, big)
    return cache[key]

  return _Unpickler(io.BytesIO(zf.read(pkl[0])), get).load()


def _load_legacy(f) -> Any:
  header = _Unpickler(f, None)
  if header.load() != _MAGIC:
    raise _Refused("it is neither a zip nor starts with torch's magic number")
  if header.load() != _PROTOCOL:
    raise _Refused("it has an unknown legacy protocol version")
  info = header.load()
  big = isinstance(info, dict) and info.get("little_endian") is False
  start = f.tell()
  # Pass 1 learns each storage's type; its tensors (built from empty storages) are dropped.
  types: Dict[str, _StorageType] = {}

  def record(key, st, numel):
    del numel
    types[key] = st
    return _Storage(None, st.dtype)

  _Unpickler(f, record).load()
  keys = _Unpickler(f, None).load()
  if not isinstance(keys, list) or set(map(str, keys)) != set(types):
    raise _Refused("its list of storage keys does not match the storages its pickle uses")
  storages: Dict[str, _Storage] = {}
  for key in map(str, keys):
    head = f.read(8)
    if len(head) != 8:
      raise _Refused(f"it ends before the storage '{key}'")
    (numel,) = struct.unpack(">q" if big else "<q", head)
    if not 0 <= numel < 1 << 48:
      raise _Refused(f"the storage '{key}' claims {numel} elements")
    raw = f.read(numel * types[key].dtype.itemsize)
    storages[key] = _bytes_storage(raw, types[key], numel, big)
  f.seek(start)

  def get(key, st, numel):
    del st
    if storages[key].data.size < numel * storages[key].dtype.itemsize:
      raise _Refused(f"the storage '{key}' is shorter than its {numel} elements")
    return storages[key]

  return _Unpickler(f, get).load()


def load(path: str | os.PathLike) -> Any:
  """The object saved by `torch.save` at `path`, with every tensor as a numpy array.

  Containers come back as they were pickled (dict, OrderedDict, list, tuple, set), numbers
  and strings as Python values. Raises ValueError (one sentence naming the file) for a file
  that is not a torch checkpoint, is truncated, or references any other Python global.
  """
  path = os.fspath(path)
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as zf:
        return _load_zip(zf)
    with open(path, "rb") as f:
      return _load_legacy(f)
  except _Refused as e:
    raise ValueError(f"Cannot read {path!r} as a PyTorch checkpoint: {e}.") from None
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile,
          struct.error, KeyError, IndexError, TypeError, ValueError, AttributeError,
          UnicodeDecodeError, OverflowError, MemoryError) as e:
    raise ValueError(f"Cannot read {path!r} as a PyTorch checkpoint: it is truncated or not "
                     f"a torch.save file ({type(e).__name__}: {str(e)[:100]}).") from None


def state_dict(obj: Any, key: Optional[str] = None) -> Dict[str, np.ndarray]:
  """The flat `{name: array}` at `obj[key]` (or `obj` itself when `key` is None).

  A TorchScript module (`ScriptObject`) gives the arrays of its tree of submodules, named by
  attribute path as `torch.jit.ScriptModule.state_dict()` names them ("layers.conv.weight");
  its other attributes (flags, ints) are left out.

  Nested mappings are joined with "." (`{"a": {"b": x}}` -> `{"a.b": x}`), and a "module."
  prefix shared by every name (a model wrapped in DataParallel / DistributedDataParallel) is
  removed. Raises ValueError for a missing key or a value that is not an array.
  """
  if key is not None:
    if not isinstance(obj, Mapping) or key not in obj:
      have = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
      raise ValueError(f"Checkpoint has no key {key!r}; it has {have}.")
    obj = obj[key]
  if isinstance(obj, ScriptObject):
    return _script_tensors(obj)
  if not isinstance(obj, Mapping):
    raise ValueError(f"A state dict must be a mapping of names to arrays, not "
                     f"{type(obj).__name__}.")
  flat: Dict[str, np.ndarray] = {}

  def walk(prefix, m):
    for k, v in m.items():
      name = f"{prefix}{k}"
      if isinstance(v, Mapping):
        walk(name + ".", v)
      elif isinstance(v, np.ndarray):
        flat[name] = v
      else:
        raise ValueError(f"State dict entry {name!r} has type {type(v).__name__}, not an array.")

  walk("", obj)
  if flat and all(k.startswith("module.") for k in flat):
    flat = {k[len("module."):]: v for k, v in flat.items()}
  return flat


def _script_tensors(root: ScriptObject) -> Dict[str, np.ndarray]:
  """`{dotted attribute path: array}` of a tree of `ScriptObject`s (each object visited once)."""
  flat: Dict[str, np.ndarray] = {}
  seen = set()

  def walk(prefix, o):
    if id(o) in seen:
      return
    seen.add(id(o))
    for k, v in o.attributes.items():
      if isinstance(v, np.ndarray):
        flat[prefix + k] = v
      elif isinstance(v, ScriptObject):
        walk(f"{prefix}{k}.", v)

  walk("", root)
  return flat
