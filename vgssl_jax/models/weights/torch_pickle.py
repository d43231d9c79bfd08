"""PyTorch checkpoint files (`torch.save`, zip format) read without torch, safely.

A checkpoint is a zip archive: `<name>/data.pkl` (a pickle of the saved object) and one
file per tensor storage under `<name>/data/`. The pickle is read by an unpickler that
knows only the few globals a checkpoint of tensors needs (tensor and parameter rebuilds,
storage dtypes, OrderedDict, numpy arrays and scalars) and turns every other global (an
argparse Namespace, a Lightning AttributeDict, a callback's class) into an inert
`Opaque` placeholder: nothing from the file is ever executed. Tensors come back as numpy
arrays (bfloat16 as float32, which numpy lacks); everything else keeps its Python value.

The original VG-SSL checkpoints hold numpy values besides tensors (`train.py` stores
`recalls` as an array and `best_r5` as a numpy float), which `torch.load(weights_only=True)`
refuses; this reader returns them as numpy values.
"""

from __future__ import annotations

import codecs
import collections
import pickle
import zipfile

import numpy as np

# storage class name -> numpy dtype (bfloat16 is read as uint16, then widened)
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# torch dtype name (torch.float32 pickles as the global torch.float32) -> storage class
_TORCH_DTYPES = {"float32": "FloatStorage", "float": "FloatStorage", "float64": "DoubleStorage",
                 "double": "DoubleStorage", "float16": "HalfStorage", "half": "HalfStorage",
                 "bfloat16": "BFloat16Storage", "int64": "LongStorage", "long": "LongStorage",
                 "int32": "IntStorage", "int": "IntStorage", "int16": "ShortStorage",
                 "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage"}


class TorchFileError(ValueError):
  """The file is not a readable PyTorch zip checkpoint."""


class Opaque:
  """Stands for an object of a global the reader does not trust: constructed from nothing,
  it only records the arguments and state the pickle gives it (nothing is executed)."""
  global_name = "?"

  def __new__(cls, *args, **kwargs):
    obj = object.__new__(cls)
    obj.args, obj.kwargs, obj.state = args, kwargs, None
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs  # recorded by __new__

  def __setstate__(self, state):
    self.state = state

  def __repr__(self) -> str:
    return f"<{self.global_name} (not loaded)>"


def _opaque(module: str, name: str) -> type:
  return type(name, (Opaque,), {"global_name": f"{module}.{name}"})


class _Storage:
  def __init__(self, dtype_name: str, data: np.ndarray):
    self.dtype_name, self.data = dtype_name, data


def _as_numpy(storage: _Storage, offset: int, size, stride) -> np.ndarray:
  flat = storage.data
  itemsize = flat.itemsize
  view = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  out = np.array(view)  # a compact copy that owns its memory
  if storage.dtype_name == "BFloat16Storage":
    out = (out.astype(np.uint32) << 16).view(np.float32)
  return out


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
  return _as_numpy(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *_):
  del requires_grad, hooks
  name = _TORCH_DTYPES.get(getattr(dtype, "name", ""), storage.dtype_name)
  if name != storage.dtype_name:
    storage = _Storage(name, storage.data.view(_STORAGE_DTYPES[name]))
  return _as_numpy(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_):
  return data


class _Dtype:
  def __init__(self, name: str):
    self.name = name


def _numpy_global(name: str):
  core = np._core.multiarray  # pylint: disable=protected-access
  return {"_reconstruct": core._reconstruct, "scalar": core.scalar, "ndarray": np.ndarray,  # pylint: disable=protected-access
          "dtype": np.dtype}.get(name)


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self.archive, self.prefix, self.storages = archive, prefix, {}

  def find_class(self, module: str, name: str):
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_tensor_v3":
      return _rebuild_tensor_v3
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return name  # a storage type, resolved in persistent_load
    if module == "torch" and name in _TORCH_DTYPES:
      return _Dtype(name)
    if module == "torch" and name == "Size":
      return tuple
    if module == "_codecs" and name == "encode":  # numpy pickles raw bytes as latin-1 text
      return codecs.encode
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy") and \
        _numpy_global(name) is not None:
      return _numpy_global(name)
    if module == "numpy.dtypes" and name.endswith("DType"):
      return getattr(np.dtypes, name, None) or _opaque(module, name)
    return _opaque(module, name)

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel = pid[:5]
    if kind != "storage":
      raise TorchFileError(f"unknown persistent record {kind!r}")
    if isinstance(storage_type, _Dtype):  # untyped storages carry the torch dtype
      storage_type = _TORCH_DTYPES[storage_type.name]
    if storage_type not in _STORAGE_DTYPES:
      raise TorchFileError(f"unsupported storage type {storage_type!r}")
    if key not in self.storages:
      raw = self.archive.read(f"{self.prefix}/data/{key}")
      data = np.frombuffer(raw, _STORAGE_DTYPES[storage_type])[:numel]
      self.storages[key] = _Storage(storage_type, data)
    return self.storages[key]


def load(path: str):
  """The object saved in a PyTorch zip checkpoint, tensors as numpy arrays.

  Raises TorchFileError for files that are not zip checkpoints (e.g. the legacy format of
  torch < 1.6, or a damaged file)."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise TorchFileError(f"not a PyTorch zip checkpoint ({e})") from e
  with archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pickles:
      raise TorchFileError("the archive has no data.pkl record")
    prefix = pickles[0][:-len("/data.pkl")] if "/" in pickles[0] else ""
    byteorder = f"{prefix}/byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
      raise TorchFileError("big-endian checkpoints are not supported")
    try:
      with archive.open(pickles[0]) as f:
        return _Unpickler(f, archive, prefix).load()
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
      raise TorchFileError(f"damaged checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
