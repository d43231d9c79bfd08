"""Writing PyTorch zip checkpoints without torch, so that loader tests can build files in the
official layouts (a Lightning `.ckpt`, a state-dict `.pth`) from golden weights.

The format torch.save writes: a zip archive `<name>/data.pkl` (protocol 2 pickle in which a
tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
OrderedDict())` and a storage the persistent id `("storage", torch.FloatStorage, key, "cpu",
numel)`), `<name>/data/<key>` (the raw little-endian bytes), `<name>/byteorder` and
`<name>/version`. Checked against torch.load in test_vpr_models when torch is installed.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import numpy as np

_STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
             np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
             np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
             np.dtype(np.bool_): "BoolStorage"}


class _Global:
  """A reference to torch's global `module.name`, pickled without importing torch."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # the pickler only writes its name; it is never called
    raise NotImplementedError(f"{self.module}.{self.name}")


class _Tensor:
  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _Storage:
  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _Pickler(pickle._Pickler):  # the Python pickler: its dispatch table can be extended
  dispatch = dict(pickle._Pickler.dispatch)

  def save_torch_global(self, obj: _Global) -> None:
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  def save_tensor(self, obj: _Tensor) -> None:
    a = obj.array
    strides = tuple(s // a.itemsize for s in a.strides)
    self.save_reduce(_Global("torch._utils", "_rebuild_tensor_v2"),
                     (_Storage(obj.key, a), 0, tuple(a.shape), strides, False,
                      collections.OrderedDict()), obj=obj)

  dispatch[_Global] = save_torch_global
  dispatch[_Tensor] = save_tensor

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _Global("torch", _STORAGES[obj.array.dtype]), obj.key, "cpu",
              obj.array.size)
    return None


def save(obj, path: str, name: str = "archive") -> None:
  """Writes `obj` (dicts, lists and scalars with numpy arrays for tensors) as torch.save
  would."""
  arrays: list[np.ndarray] = []

  def wrap(x):
    if isinstance(x, np.ndarray):
      arrays.append(np.array(x, order="C"))  # (ascontiguousarray makes 0-d 1-d)
      return _Tensor(str(len(arrays) - 1), arrays[-1])
    if isinstance(x, dict):
      return collections.OrderedDict((k, wrap(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
      return type(x)(wrap(v) for v in x)
    return x

  wrapped = wrap(obj)
  buffer = io.BytesIO()
  _Pickler(buffer, protocol=2).dump(wrapped)
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(f"{name}/data.pkl", buffer.getvalue())
    archive.writestr(f"{name}/byteorder", "little")
    for i, a in enumerate(arrays):
      archive.writestr(f"{name}/data/{i}", a.astype(a.dtype.newbyteorder("<")).tobytes())
    archive.writestr(f"{name}/version", "3\n")
