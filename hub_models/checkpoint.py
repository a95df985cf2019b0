"""Reading `torch.save` checkpoints with numpy alone, without running any code from the pickle.

`load(path)` returns the saved object with every tensor as a numpy array. It reads both the zip
format (`<name>/data.pkl` plus one `<name>/data/<key>` record per storage) and the legacy format
(`_use_new_zipfile_serialization=False`: a magic-number pickle, a protocol-version pickle, a
sys-info pickle, the main pickle, a pickle of storage keys, then each storage as an int64 element
count and the raw little-endian bytes).

Unpickling resolves only an explicit allow-list of globals (tensor and parameter rebuilding, storage
types, `collections.OrderedDict`, a few builtins) and maps each to code in this module; torch is
never imported. Any other global is replaced by a stand-in class that is never imported either:
rebuilding an ordinary class instance from it (NEWOBJ, `copyreg._reconstructor`) yields a
`SkippedObject`, and calling it as a function (REDUCE, INST, OBJ: how `os.system(...)` would be
pickled) raises `CheckpointError`. numpy scalars and arrays in metadata also become `SkippedObject`.
"""

import collections
import dataclasses
import io
import os
import pickle
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

# torch dtype name -> numpy type code of one stored element (the byte order is added per file).
# bfloat16 has no numpy type: its raw 16 bits are widened to float32.
_ELEMENT_CODES = {
    'float64': 'f8', 'float32': 'f4', 'float16': 'f2', 'bfloat16': 'u2',
    'complex128': 'c16', 'complex64': 'c8',
    'int64': 'i8', 'int32': 'i4', 'int16': 'i2', 'int8': 'i1',
    'uint64': 'u8', 'uint32': 'u4', 'uint16': 'u2', 'uint8': 'u1', 'bool': '?',
}
# Storage class (a global in the pickle, resolved by name only) -> torch dtype name. Untyped
# storages are bytes; tensors on them (`_rebuild_tensor_v3`) carry their own dtype.
_STORAGE_DTYPES = {
    'DoubleStorage': 'float64', 'FloatStorage': 'float32', 'HalfStorage': 'float16',
    'BFloat16Storage': 'bfloat16', 'ComplexDoubleStorage': 'complex128',
    'ComplexFloatStorage': 'complex64', 'LongStorage': 'int64', 'IntStorage': 'int32',
    'ShortStorage': 'int16', 'CharStorage': 'int8', 'ByteStorage': 'uint8', 'BoolStorage': 'bool',
    'UntypedStorage': 'uint8',
}
# Older torch named storages of CUDA tensors `torch.cuda.*Storage`; torch 2 writes `torch.*Storage`
# and `torch.storage.UntypedStorage`.
_STORAGE_MODULES = ('torch', 'torch.cuda', 'torch.storage')
# Allowed functions -> the `_SafeUnpickler` method that replaces each.
_HANDLERS = {
    ('torch._utils', '_rebuild_tensor'): '_rebuild_tensor',
    ('torch._utils', '_rebuild_tensor_v2'): '_rebuild_tensor_v2',
    ('torch._utils', '_rebuild_tensor_v3'): '_rebuild_tensor_v3',
    ('torch._utils', '_rebuild_parameter'): '_rebuild_parameter',
    ('torch._utils', '_rebuild_parameter_with_state'): '_rebuild_parameter',
    ('torch._tensor', '_rebuild_from_type_v2'): '_rebuild_from_type_v2',
    ('torch', 'device'): '_device',
    ('copyreg', '_reconstructor'): '_reconstructor',
    ('_codecs', 'encode'): '_encode',
    ('builtins', 'bytes'): '_empty_bytes',
}
# Allowed classes that are safe to call with any arguments a pickle can build.
_TYPES = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('torch', 'Size'): tuple,
}
# Protocol 0-2 pickles spell some modules the Python 2 way.
_PY2_MODULES = {'__builtin__': 'builtins', 'copy_reg': 'copyreg'}
# numpy globals whose calls rebuild numpy scalars and arrays in metadata (`_frombuffer` from pickle
# protocol 5 on); such calls give a SkippedObject instead of a refusal. numpy 2 moved `numpy.core`
# to `numpy._core`.
_SKIPPED_WHEN_CALLED = frozenset([
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    ('numpy', 'dtype'),
])
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_REFUSAL_REASON = 'only tensor rebuilding and plain containers are allowed'


class CheckpointError(ValueError):
  """A checkpoint is missing, corrupt, not a torch checkpoint, or asks to run code.

  Raised by `load` with a one-line message that starts with the file's path.
  """


class SkippedObject:
  """Stands in for an instance of a class outside the allow-list; the class is never imported.

  Attributes:
    module: module of the class as the pickle names it, e.g. `'mmcv.utils.config'`.
    name: name of the class, e.g. `'Config'`.
  """
  __slots__ = ('module', 'name')

  def __init__(self, module: str, name: str):
    self.module = module
    self.name = name

  def __repr__(self) -> str:
    return f'<skipped {self.module}.{self.name}>'

  # The unpickler hands an instance its state (BUILD) and, for dict and list subclasses, its items
  # (SETITEMS, APPENDS); all of it is dropped unread.
  def __setstate__(self, state: Any) -> None:
    pass

  def __setitem__(self, key: Any, value: Any) -> None:
    pass

  def append(self, item: Any) -> None:
    pass

  def extend(self, items: Any) -> None:
    pass


class _StandIn(type):
  """Metaclass of the classes `find_class` returns for globals outside the allow-list."""

  def __call__(cls, *args, **kwargs):
    if cls.skip_calls:
      return SkippedObject(cls.module, cls.name)
    raise CheckpointError(f'refused to call {cls.module}.{cls.name} while unpickling '
                          f'({_REFUSAL_REASON})')

  def __repr__(cls) -> str:
    return f'<unresolved global {cls.module}.{cls.name}>'


def _stand_in(module: str, name: str) -> _StandIn:
  """A fresh class named after the global; NEWOBJ turns it into a SkippedObject, calls refuse."""

  def __new__(_cls, *_args, **_kwargs):
    return SkippedObject(module, name)

  return _StandIn(name, (), {
      'module': module, 'name': name, 'skip_calls': (module, name) in _SKIPPED_WHEN_CALLED,
      '__new__': __new__,
      # With `__getinitargs__` present, INST and OBJ call the class (and so refuse) instead of
      # quietly using `__new__`.
      '__getinitargs__': None,
  })


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """What a storage class global resolves to.

  find_class makes a fresh one per global, so a pickle altering it with BUILD affects only itself.
  """
  dtype: str  # torch dtype name, a key of _ELEMENT_CODES


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  """A storage named by a persistent id; its bytes are read after unpickling."""
  key: str
  dtype: str


@dataclasses.dataclass(frozen=True)
class _PendingTensor:
  """An output array waiting for its storage: `out.shape`, `strides` and `offset` in elements."""
  out: np.ndarray
  dtype: str
  offset: int
  strides: Tuple[int, ...]


def _int_tuple(value: Any) -> Tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, int) and v >= 0 for v in value):
    raise CheckpointError(f'malformed tensor size or stride {value!r:.80}')
  return tuple(value)


class _SafeUnpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals, each to code in this module.

  Tensors come back as empty arrays of their final shape and dtype, listed in `pending` by storage
  key; the caller fills them once the storages are read (in the legacy format they follow the
  pickle). `itemsizes` gives each storage's element size, which the legacy format needs in order to
  step over storages.
  """

  def __init__(self, file):
    super().__init__(file, encoding='utf-8')
    self.pending: Dict[str, List[_PendingTensor]] = {}
    self.itemsizes: Dict[str, int] = {}

  def find_class(self, module: str, name: str) -> Any:
    module = _PY2_MODULES.get(module, module)
    if (module, name) in _HANDLERS:
      # Bound methods, so that a pickle cannot BUILD attributes such as `__defaults__` onto the
      # module's function objects and so affect later loads.
      return getattr(self, _HANDLERS[module, name])
    if (module, name) in _TYPES:
      return _TYPES[module, name]
    if module in _STORAGE_MODULES and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if module == 'torch' and name in _ELEMENT_CODES:
      return f'torch.{name}'
    return _stand_in(module, name)

  def persistent_load(self, pid: Any) -> _StorageRef:
    # zip format: ('storage', storage_type, key, location, numel); legacy adds view_metadata.
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == 'storage'):
      raise CheckpointError(f'unsupported persistent id {pid!r:.80}')
    storage_type, key = pid[1], str(pid[2])
    if len(pid) == 6 and pid[5] is not None:
      raise CheckpointError('storage views (written by torch before 1.0) are not supported')
    if not isinstance(storage_type, _StorageType):
      raise CheckpointError(f'unknown storage type {storage_type!r:.80}')
    self.itemsizes.setdefault(key, np.dtype(_ELEMENT_CODES[storage_type.dtype]).itemsize)
    return _StorageRef(key, storage_type.dtype)

  def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any,
              dtype: Optional[str] = None) -> np.ndarray:
    """An empty array for the tensor, queued in `pending`; `dtype` defaults to the storage's."""
    if not isinstance(storage, _StorageRef):
      raise CheckpointError(f'tensor rebuilt from {storage!r:.80} instead of a storage')
    dtype = dtype or storage.dtype
    shape, strides = _int_tuple(size), _int_tuple(stride)
    if len(strides) != len(shape) or not isinstance(offset, int) or offset < 0:
      raise CheckpointError(
          f'malformed tensor: size {shape}, stride {strides}, offset {offset!r:.20}')
    out = np.empty(shape, np.float32 if dtype == 'bfloat16' else _ELEMENT_CODES[dtype])
    self.pending.setdefault(storage.key, []).append(_PendingTensor(out, dtype, offset, strides))
    return out

  # The handlers below take torch's positional arguments; `*_` drops requires_grad, backward
  # hooks, tensor metadata and Python state, none of which a numpy array keeps.

  def _rebuild_tensor(self, storage, storage_offset, size, stride) -> np.ndarray:
    return self._tensor(storage, storage_offset, size, stride)

  def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, *_) -> np.ndarray:
    return self._tensor(storage, storage_offset, size, stride)

  def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, _requires_grad,
                         _backward_hooks, dtype, *_) -> np.ndarray:
    # Dtypes without a storage class (uint16, float8, ...): the storage is bytes and `dtype` a
    # `torch.<name>` global, which find_class resolved to that string if numpy has the type.
    name = dtype[len('torch.'):] if isinstance(dtype, str) else None
    if name not in _ELEMENT_CODES:
      raise CheckpointError(f'unsupported tensor dtype {dtype!r:.80}')
    return self._tensor(storage, storage_offset, size, stride, name)

  def _rebuild_parameter(self, data, *_) -> Any:
    return data

  def _rebuild_from_type_v2(self, func, _new_type, args, *_) -> Any:
    # A tensor subclass or a tensor with Python attributes: rebuild the plain tensor, drop the rest.
    if getattr(func, '__self__', None) is not self:
      raise CheckpointError(f'refused to rebuild a tensor through {func!r:.80} ({_REFUSAL_REASON})')
    return func(*args)

  def _device(self, kind, index=None) -> str:
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
      raise CheckpointError(f'malformed torch.device{(kind, index)!r:.80}')
    return kind if index is None else f'{kind}:{index}'

  def _reconstructor(self, cls, *_) -> SkippedObject:
    # How protocols 0 and 1 rebuild an ordinary class instance.
    if not isinstance(cls, _StandIn):
      raise CheckpointError(f'refused to call copyreg._reconstructor for {cls!r:.80} '
                            f'({_REFUSAL_REASON})')
    return SkippedObject(cls.module, cls.name)

  def _encode(self, text, encoding) -> bytes:
    # Protocols 0-2 store bytes as `_codecs.encode(text, 'latin1')`.
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
      raise CheckpointError(f'refused to call _codecs.encode except to rebuild bytes from latin-1 '
                            f'text ({_REFUSAL_REASON})')
    return text.encode('latin-1')

  def _empty_bytes(self, *args) -> bytes:
    # Protocols 0-2 store b'' as `bytes()`; with arguments bytes() could allocate at will.
    if args:
      raise CheckpointError(f'refused to call builtins.bytes with arguments ({_REFUSAL_REASON})')
    return b''


def _fill(pending: List[_PendingTensor], data: bytes, key: str, byteorder: str) -> None:
  """Copies each pending tensor's elements out of its storage's raw bytes."""
  for tensor in pending:
    if not tensor.out.size:
      continue
    element = np.dtype(_ELEMENT_CODES[tensor.dtype]).newbyteorder(byteorder)
    shape = tensor.out.shape
    needed = tensor.offset + sum((n - 1) * s for n, s in zip(shape, tensor.strides)) + 1
    available = len(data) // element.itemsize
    if needed > available:
      raise CheckpointError(
          f'storage {key!r} holds {available} {tensor.dtype} elements but a tensor of size '
          f'{list(shape)}, stride {list(tensor.strides)} and offset {tensor.offset} needs {needed}')
    source = np.ndarray(shape, element, buffer=data, offset=tensor.offset * element.itemsize,
                        strides=[s * element.itemsize for s in tensor.strides])
    if tensor.dtype == 'bfloat16':
      source = (source.astype(np.uint32) << 16).view(np.float32)
    tensor.out[...] = source


def _load_zip(file) -> Any:
  with zipfile.ZipFile(file) as archive:
    names = set(archive.namelist())
    pickles = [n for n in names if n.count('/') == 1 and n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise CheckpointError(f'zip archive is not a torch checkpoint: it holds {len(pickles)} '
                            f'<name>/data.pkl records, not one')
    prefix = pickles[0][:-len('data.pkl')]
    byteorder = archive.read(prefix + 'byteorder') if prefix + 'byteorder' in names else b'little'
    if byteorder not in (b'little', b'big'):
      raise CheckpointError(f'unknown byte order {byteorder[:20]!r} in {prefix}byteorder')
    unpickler = _SafeUnpickler(io.BytesIO(archive.read(pickles[0])))
    result = unpickler.load()
    for key, pending in unpickler.pending.items():
      record = f'{prefix}data/{key}'
      if record not in names:
        raise CheckpointError(f'data.pkl references storage record {record!r}, which the archive '
                              f'lacks')
      _fill(pending, archive.read(record), key, '<' if byteorder == b'little' else '>')
  return result


def _load_legacy(file) -> Any:
  magic = _SafeUnpickler(file).load()
  if not isinstance(magic, int) or magic != _LEGACY_MAGIC:
    raise CheckpointError('not a torch checkpoint: a pickle without the torch magic number')
  version = _SafeUnpickler(file).load()
  if version != _LEGACY_PROTOCOL:
    raise CheckpointError(f'unsupported legacy protocol version {version!r:.20}')
  # sys_info: nothing in it is needed, as storages are always written little-endian.
  _SafeUnpickler(file).load()
  unpickler = _SafeUnpickler(file)
  result = unpickler.load()
  keys = _SafeUnpickler(file).load()
  if not isinstance(keys, list):
    raise CheckpointError(f'storage key list is a {type(keys).__name__}, not a list')
  file_size = os.fstat(file.fileno()).st_size
  for key in keys:
    itemsize = unpickler.itemsizes.get(key)
    if itemsize is None:
      raise CheckpointError(f'storage {key!r:.40} is listed but never referenced')
    count = file.read(8)
    numel = int.from_bytes(count, 'little', signed=True)
    if len(count) < 8 or not 0 <= numel * itemsize <= file_size - file.tell():
      raise CheckpointError(f'truncated legacy torch file: storage {key!r} of {numel} elements '
                            f'does not fit in the file')
    _fill(unpickler.pending.pop(key, []), file.read(numel * itemsize), key, '<')
  if unpickler.pending:
    raise CheckpointError(f'pickled data references storage {next(iter(unpickler.pending))!r}, '
                          f'which the file lacks')
  return result


def _checked(reader, file, what: str) -> Any:
  """`reader(file)`, with any failure other than a CheckpointError reported as `what`."""
  try:
    return reader(file)
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Corrupt bytes reach the pickle machinery, zipfile and numpy, which raise all kinds of errors.
    raise CheckpointError(f'{what} ({type(e).__name__}: {e!s:.200})') from e


def load(path: 'str | os.PathLike') -> Any:
  """Reads a `torch.save` file without torch and without running code from its pickle.

  Args:
    path: a file written by `torch.save`, in the zip or the legacy format.

  Returns:
    The saved object. Each tensor or `nn.Parameter` becomes a C-contiguous `np.ndarray` that owns
    its data, with the tensor's shape and the numpy dtype of the same name (bfloat16 becomes
    float32); tensors that were views of one storage become independent copies. Dicts,
    OrderedDicts, lists, tuples, sets and primitives come back as themselves, `torch.Size` as a
    tuple, `torch.device` as a string such as `'cuda:0'`, a torch dtype as a string such as
    `'torch.float16'`, and instances of other classes (including numpy scalars and arrays) as
    `SkippedObject`s.

  Raises:
    CheckpointError: the file is missing, empty, truncated or corrupt, is not a torch checkpoint,
      holds a tensor type this reader does not support, or its pickle calls anything outside the
      allow-list (such as `os.system`).
  """
  path = os.fspath(path)
  try:
    with open(path, 'rb') as file:
      head = file.read(4)
      file.seek(0)
      if not head:
        raise CheckpointError('empty file')
      if head == b'PK\x03\x04':
        return _checked(_load_zip, file, 'truncated or corrupt torch zip archive')
      if head[0] == pickle.PROTO[0]:
        return _checked(_load_legacy, file, 'truncated or corrupt legacy torch file')
      raise CheckpointError('not a torch checkpoint: neither a zip archive nor a pickle')
  except CheckpointError as e:
    # One line, although a repr quoted in the message (of an array, say) may span several.
    raise CheckpointError(f'{path}: {" ".join(str(e).split())}') from e.__cause__
  except OSError as e:
    raise CheckpointError(f'{path}: cannot read the file ({e.strerror or e})') from e
