"""Reading `torch.save` checkpoints with numpy alone, without running any code from the pickle.

`load(path)` returns the saved object with every tensor as a numpy array. It reads both the zip
format (`<name>/data.pkl` plus one `<name>/data/<key>` record per storage) and the legacy format
(`_use_new_zipfile_serialization=False`: a magic-number pickle, a protocol-version pickle, a
sys-info pickle, the main pickle, a pickle of storage keys, then each storage as an int64 element
count and the raw little-endian bytes).

Unpickling resolves only an explicit allow-list of globals (tensor and parameter rebuilding, storage
types, `collections.OrderedDict`, a few builtins) and maps each to code in this module; torch is
never imported. Any other global is replaced by a stand-in that is never imported either:
rebuilding an ordinary class instance from it (NEWOBJ, `copyreg._reconstructor`) yields a
`SkippedObject`, and calling it as a function (REDUCE, INST, OBJ: how `os.system(...)` would be
pickled) raises `CheckpointError`. numpy scalars and arrays in metadata also become `SkippedObject`.

No file can make `load` hang or exhaust memory; it raises `CheckpointError` instead:

- Memory factor: the arrays returned take at most `Limits.array_bytes_per_file_byte` (4) bytes
  per byte of the file (bfloat16 widened to float32 takes 2; several views of one storage are
  independent copies and count in full). Everything else the pickle builds comes from at most
  `Limits.max_pickle_ops` opcodes (2**21, about 2 s) of at least one byte each; none allocates
  more than an empty set (~230 bytes with its stack slot, the worst case measured) besides strings
  no longer than the pickle. Peak memory is therefore at most the arrays, one storage record's raw
  bytes, ~10 bytes per zip directory byte and 256 bytes per pickle byte:
  `MEMORY_BYTES_PER_FILE_BYTE` (260) x the file's size, plus 2 MiB. tools/fuzz_checkpoint.py
  checks that bound under tracemalloc for every input it tries.
- Storages: each zip record a tensor uses must be stored uncompressed (torch never compresses) and
  hold exactly the bytes its persistent id declares, checked before it is read; the records together
  must fit in the file (no overlapping records); records no pickle references are refused. In the
  legacy format each storage's element count must equal its persistent id's. Every tensor's size,
  stride and offset must stay inside its storage before its array is allocated.
- Structure: nesting depth, items per container, the objects a full walk of the result visits (so
  a list holding the previous level twice, 40 levels deep, is refused), tensors, storages,
  distinct globals and opcodes are limited (`Limits`); reference cycles are refused; dict and set
  keys must be str, bytes, bool, None, int below 2**61 or tuples of these (no float or huge-int
  keys, whose hashes an attacker can make collide). Each refusal names the limit it hit.
- Messages quote objects through a bounded repr (`_brief`), which never builds the full repr.
- A MemoryError is reported as running out of memory, not as a corrupt file.
"""

import collections
import dataclasses
import io
import os
import pickle
import reprlib
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Limits:
  """What `load` accepts; anything beyond raises CheckpointError naming the field."""
  array_bytes_per_file_byte: int = 4
  max_pickle_ops: int = 1 << 21
  max_depth: int = 64  # containers nested in containers, the result itself being level 1
  max_container_items: int = 1 << 20
  max_walk: int = 1 << 24  # objects a full walk visits, shared objects counted once per path
  max_tensors: int = 1 << 18
  max_storages: int = 1 << 18
  max_globals: int = 1 << 12  # distinct module.name pairs
  max_ndim: int = 64  # numpy's own limit
  max_key_items: int = 1024  # in a dict key or set element, counted through nested tuples


DEFAULT_LIMITS = Limits()
# The bound on peak memory stated in the module docstring, per byte of the file (plus 2 MiB).
MEMORY_BYTES_PER_FILE_BYTE = 260

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
# Handlers `_rebuild_from_type_v2` may hand its arguments to.
_TENSOR_HANDLERS = frozenset(['_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_tensor_v3',
                              '_rebuild_parameter'])
# Allowed container types; calls to them go through `_SafeUnpickler._container`.
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
# Sizes, strides, offsets and element counts above this are refused before any arithmetic.
_MAX_INDEX = 1 << 62
# Ints in dict keys and sets below this in magnitude hash to distinct values.
_MAX_KEY_INT = (1 << 61) - 1
_KEY_TYPES = (str, bytes, bool, type(None))
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set, frozenset)


class CheckpointError(ValueError):
  """A checkpoint is missing, corrupt, not a torch checkpoint, asks to run code, or exceeds a limit.

  Raised by `load` with a one-line message that starts with the file's path.
  """


class _BriefRepr(reprlib.Repr):
  """reprlib with small limits, and without ever building a full repr of ints, bytes or dicts."""

  def __init__(self):
    super().__init__()
    self.maxlevel = 3
    self.maxtuple = self.maxlist = self.maxset = self.maxfrozenset = self.maxdeque = 4
    self.maxdict = 3
    self.maxstring = self.maxother = 60

  def repr_int(self, x, level):
    if x.bit_length() > 128:
      return f'<int of {x.bit_length()} bits>'
    return super().repr_int(x, level)

  def repr_bytes(self, x, level):
    return repr(x[:self.maxstring]) + ('...' if len(x) > self.maxstring else '')

  def repr_OrderedDict(self, x, level):  # pylint: disable=invalid-name
    return 'OrderedDict(' + self.repr_dict(x, level) + ')'

  def repr_ndarray(self, x, level):
    return f'<array {x.dtype} {list(x.shape)}>'


_BRIEF = _BriefRepr()


def _brief(value: Any) -> str:
  """A repr of at most ~120 characters, whose cost does not depend on the value's size."""
  return _BRIEF.repr(value)


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
    return f'<skipped {_brief(self.module)[1:-1]}.{_brief(self.name)[1:-1]}>'

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


@dataclasses.dataclass(frozen=True)
class _Global:
  """What `find_class` returns for a global outside the allow-list; never imported."""
  module: str
  name: str

  def __repr__(self) -> str:
    return f'<unresolved global {_brief(self.module)[1:-1]}.{_brief(self.name)[1:-1]}>'


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """What a storage class global resolves to."""
  dtype: str  # torch dtype name, a key of _ELEMENT_CODES


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  """A storage named by a persistent id: `numel` elements of `dtype`; read after unpickling."""
  key: str
  dtype: str
  numel: int

  @property
  def nbytes(self) -> int:
    return self.numel * np.dtype(_ELEMENT_CODES[self.dtype]).itemsize


@dataclasses.dataclass(frozen=True)
class _PendingTensor:
  """An output array waiting for its storage: `out.shape`, `strides` and `offset` in elements."""
  out: np.ndarray
  dtype: str
  offset: int
  strides: Tuple[int, ...]


class _Budget:
  """What one `load` may still spend, shared by all the pickles of one file."""

  def __init__(self, file_size: int, limits: Limits):
    self.file_size = file_size
    self.limits = limits
    self.ops = 0
    self.array_bytes = 0
    self.tensors = 0

  def op(self) -> None:
    self.ops += 1
    if self.ops > self.limits.max_pickle_ops:
      raise CheckpointError(f'the pickles exceed the limit of {self.limits.max_pickle_ops} '
                            f'opcodes (max_pickle_ops)')

  def tensor(self, nbytes: int) -> None:
    self.tensors += 1
    if self.tensors > self.limits.max_tensors:
      raise CheckpointError(f'more than {self.limits.max_tensors} tensors (max_tensors)')
    self.array_bytes += nbytes
    allowed = self.limits.array_bytes_per_file_byte * self.file_size
    if self.array_bytes > allowed:
      raise CheckpointError(
          f'the tensors need more than {self.array_bytes} bytes, over the limit of '
          f'{self.limits.array_bytes_per_file_byte} x the file\'s {self.file_size} bytes '
          f'(array_bytes_per_file_byte)')


def _check_size(kind: str, count: int, limits: Limits) -> None:
  if count > limits.max_container_items:
    raise CheckpointError(f'a {kind} of more than {limits.max_container_items} items '
                          f'(max_container_items)')


def _check_key(key: Any, limits: Limits) -> None:
  """Refuses dict keys and set elements whose hashes a file could make collide or costly.

  Tuples are hashed element by element, each time: a tuple sharing one wide tuple over a few
  levels would take exponential time, so the elements, counted through every level, are limited.
  """
  pending, visited = [key], 0
  while pending:
    item = pending.pop()
    kind = type(item)
    if kind in _KEY_TYPES or kind is SkippedObject:
      continue
    if kind is int:
      if not -_MAX_KEY_INT < item < _MAX_KEY_INT:
        raise CheckpointError(f'a dict key or set element {_brief(item)} of magnitude 2**61 or '
                              f'more')
      continue
    if kind is not tuple:
      raise CheckpointError(f'a dict key or set element of type {kind.__name__} (only str, '
                            f'bytes, bool, None, int and tuples of them are allowed)')
    visited += len(item)
    if visited > limits.max_key_items:
      raise CheckpointError(f'a dict key or set element of more than {limits.max_key_items} '
                            f'items, counted through its nested tuples (max_key_items)')
    pending.extend(item)


class _BoundedFile:
  """A read-only view of `size` bytes of `file` from its current position; reads never exceed it.

  Clamping matters: a buffered file's `read(n)` allocates n bytes before reading.
  """

  def __init__(self, file, size: int):
    self._file = file
    self.size = size
    self._end = file.tell() + size

  def remaining(self) -> int:
    return max(0, self._end - self._file.tell())

  def read(self, n: int = -1) -> bytes:
    return self._file.read(self.remaining() if n is None or n < 0 else min(n, self.remaining()))

  def readline(self) -> bytes:
    return self._file.readline(self.remaining())


def _int_tuple(value: Any, what: str) -> Tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(
      type(v) is int and 0 <= v < _MAX_INDEX for v in value):
    raise CheckpointError(f'malformed tensor {what} {_brief(value)}')
  return tuple(value)


def _opcode(code: bytes):
  """Decorator: registers the method as the handler of pickle opcode `code` in `_DISPATCH`."""

  def register(method):
    _DISPATCH[code[0]] = method
    return method

  return register


_DISPATCH = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access


class _SafeUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Pure-Python unpickler that resolves only allow-listed globals, each to code in this module.

  The pure-Python machinery (not `_pickle`) is used so that every opcode can be checked: the C
  unpickler grows its memo to the largest index a PUT names and allocates a string's declared
  length before reading it.

  Tensors come back as empty arrays of their final shape and dtype, listed in `pending` by storage
  key; the caller fills them once the storages are read (in the legacy format they follow the
  pickle). `storages` holds every storage the pickle references.

  Args:
    file: a `_BoundedFile` holding the pickle.
    budget: the load's shared limits and counters.
    check_storage: called with each new `_StorageRef` before any tensor uses it (the zip reader
      checks the record there).
  """
  dispatch = _DISPATCH

  def __init__(self, file: _BoundedFile, budget: _Budget, check_storage=None):
    super().__init__(file, encoding='utf-8')
    self._source = file
    self._budget = budget
    self._limits = budget.limits
    self._check_storage = check_storage
    self._globals: Dict[Tuple[str, str], Any] = {}
    self.pending: Dict[str, List[_PendingTensor]] = {}
    self.storages: Dict[str, _StorageRef] = {}

  def load(self) -> Any:
    # pickle._Unpickler.load with each opcode counted and unknown opcodes named.
    # pylint: disable-next=protected-access
    self._unframer = pickle._Unframer(self._file_read, self._file_readline)
    self.read = self._unframer.read
    self.readinto = self._unframer.readinto
    self.readline = self._unframer.readline
    self.metastack = []
    self.stack = []
    self.append = self.stack.append
    self.proto = 0
    try:
      while True:
        key = self.read(1)
        if not key:
          raise CheckpointError('pickle ends without a STOP opcode')
        self._budget.op()
        handler = self.dispatch.get(key[0])
        if handler is None:
          raise CheckpointError(f'invalid pickle opcode 0x{key[0]:02x}')
        handler(self)
    except pickle._Stop as stop:  # pylint: disable=protected-access
      return stop.value

  def find_class(self, module: str, name: str) -> Any:
    module = _PY2_MODULES.get(module, module)
    if (module, name) in _HANDLERS:
      return getattr(self, _HANDLERS[module, name])
    if (module, name) in _TYPES:
      return _TYPES[module, name]
    if (module, name) not in self._globals:
      if len(self._globals) >= self._limits.max_globals:
        raise CheckpointError(f'more than {self._limits.max_globals} distinct globals '
                              f'(max_globals)')
      if module in _STORAGE_MODULES and name in _STORAGE_DTYPES:
        resolved = _StorageType(_STORAGE_DTYPES[name])
      elif module == 'torch' and name in _ELEMENT_CODES:
        resolved = f'torch.{name}'
      else:
        resolved = _Global(module, name)
      self._globals[module, name] = resolved
    return self._globals[module, name]

  def persistent_load(self, pid: Any) -> _StorageRef:
    # zip format: ('storage', storage_type, key, location, numel); legacy adds view_metadata.
    if not (type(pid) is tuple and len(pid) in (5, 6) and pid[0] == 'storage'):
      raise CheckpointError(f'unsupported persistent id {_brief(pid)}')
    _, storage_type, key, _, numel = pid[:5]
    if len(pid) == 6 and pid[5] is not None:
      raise CheckpointError('storage views (written by torch before 1.0) are not supported')
    if not isinstance(storage_type, _StorageType):
      raise CheckpointError(f'unknown storage type {_brief(storage_type)}')
    if type(key) is not str or type(numel) is not int or not 0 <= numel < _MAX_INDEX:
      raise CheckpointError(f'malformed persistent id {_brief(pid)}')
    ref = _StorageRef(key, storage_type.dtype, numel)
    known = self.storages.get(key)
    if known is None:
      if len(self.storages) >= self._limits.max_storages:
        raise CheckpointError(f'more than {self._limits.max_storages} storages (max_storages)')
      if self._check_storage:
        self._check_storage(ref)
      self.storages[key] = ref
    elif known != ref:
      raise CheckpointError(f'storage {_brief(key)} is declared both as {known.numel} '
                            f'{known.dtype} and as {numel} {ref.dtype} elements')
    return ref

  # Calls (REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ) all go through `_call`.

  def _call(self, func: Any, args: Any, kwargs: Any = None, new: bool = False) -> Any:
    """`func(*args, **kwargs)` for allowed `func`; `new` marks NEWOBJ (an instance, no call)."""
    if type(args) not in (tuple, list) or not (kwargs is None or type(kwargs) is dict):
      raise CheckpointError(f'call arguments are a {type(args).__name__}, not a tuple')
    if isinstance(func, _Global):
      if new or (func.module, func.name) in _SKIPPED_WHEN_CALLED:
        return SkippedObject(func.module, func.name)
      raise CheckpointError(f'refused to call {_brief(func.module)[1:-1]}.{_brief(func.name)[1:-1]}'
                            f' while unpickling ({_REFUSAL_REASON})')
    if any(func is t for t in _TYPES.values()):
      return self._container(func, args, kwargs or {})
    if getattr(func, '__self__', None) is self and not new and not kwargs:
      return func(*args)
    raise CheckpointError(f'refused to call {_brief(func)} while unpickling ({_REFUSAL_REASON})')

  def _container(self, kind: type, args: Any, kwargs: Dict[str, Any]) -> Any:
    """`kind(*args, **kwargs)` for an allowed container type, with sizes and keys checked."""
    if len(args) > 1 or (kwargs and kind is not collections.OrderedDict):
      raise CheckpointError(f'{kind.__name__} called with {len(args)} arguments')
    items = args[0] if args else ()
    if type(items) not in (tuple, list, dict, collections.OrderedDict, set, frozenset, str, bytes):
      raise CheckpointError(f'{kind.__name__} built from a {type(items).__name__}')
    _check_size(kind.__name__, len(items) + len(kwargs), self._limits)
    if kind is collections.OrderedDict:
      pairs = list(items.items()) if isinstance(items, dict) else list(items)
      for pair in pairs:
        if type(pair) not in (tuple, list) or len(pair) != 2:
          raise CheckpointError(f'OrderedDict built from {_brief(pair)}, not a key-value pair')
        _check_key(pair[0], self._limits)
      return collections.OrderedDict(pairs, **kwargs)
    if kind is not tuple:
      for item in items:
        _check_key(item, self._limits)
    return kind(items)

  @_opcode(pickle.REDUCE)
  def _load_reduce(self):
    args = self.stack.pop()
    self.stack[-1] = self._call(self.stack[-1], args)

  @_opcode(pickle.NEWOBJ)
  def _load_newobj(self):
    args = self.stack.pop()
    cls = self.stack.pop()
    self.append(self._call(cls, args, new=True))

  @_opcode(pickle.NEWOBJ_EX)
  def _load_newobj_ex(self):
    kwargs = self.stack.pop()
    args = self.stack.pop()
    cls = self.stack.pop()
    self.append(self._call(cls, args, kwargs, new=True))

  def _instantiate(self, klass, args):
    # INST and OBJ.
    self.append(self._call(klass, args))

  @_opcode(pickle.BUILD)
  def _load_build(self):
    state = self.stack.pop()
    inst = self.stack[-1]
    if type(inst) is SkippedObject:
      return
    # `OrderedDict.__reduce__` hands a state_dict its `_metadata` attribute this way.
    if type(inst) is collections.OrderedDict and type(state) is dict and all(
        type(k) is str for k in state):
      vars(inst).update(state)
      return
    raise CheckpointError(f'refused to set the state of a {type(inst).__name__} '
                          f'({_REFUSAL_REASON})')

  @_opcode(pickle.PUT)
  def _load_put(self):
    # Keys a file chooses freely could collide in the memo dict: only small indices.
    i = int(self.readline()[:-1])
    if not 0 <= i < _MAX_INDEX:
      raise CheckpointError(f'PUT index {_brief(i)} out of range')
    self.memo[i] = self.stack[-1]

  @_opcode(pickle.BYTEARRAY8)
  def _load_bytearray8(self):
    # `bytearray(n)` would allocate the declared length before reading.
    n = int.from_bytes(self.read(8), 'little')
    if n > self._source.size:
      raise CheckpointError(f'a bytearray of {n} bytes is longer than the pickle')
    self.append(bytearray(self.read(n)))

  @_opcode(pickle.APPEND)
  def _load_append(self):
    value = self.stack.pop()
    self._extend(self.stack[-1], [value])

  @_opcode(pickle.APPENDS)
  def _load_appends(self):
    items = self.pop_mark()
    self._extend(self.stack[-1], items)

  def _extend(self, target: Any, items: List[Any]) -> None:
    if type(target) is SkippedObject:
      return
    if type(target) is not list:
      raise CheckpointError(f'APPENDS to a {type(target).__name__}, not a list')
    _check_size('list', len(target) + len(items), self._limits)
    target.extend(items)

  @_opcode(pickle.SETITEM)
  def _load_setitem(self):
    value = self.stack.pop()
    key = self.stack.pop()
    self._set_items(self.stack[-1], [key, value])

  @_opcode(pickle.SETITEMS)
  def _load_setitems(self):
    items = self.pop_mark()
    self._set_items(self.stack[-1], items)

  def _set_items(self, target: Any, items: List[Any]) -> None:
    if type(target) is SkippedObject:
      return
    if type(target) not in (dict, collections.OrderedDict):
      raise CheckpointError(f'SETITEMS on a {type(target).__name__}, not a dict')
    if len(items) % 2:
      raise CheckpointError('SETITEMS with an odd number of items')
    _check_size('dict', len(target) + len(items) // 2, self._limits)
    for i in range(0, len(items), 2):
      _check_key(items[i], self._limits)
      target[items[i]] = items[i + 1]

  @_opcode(pickle.DICT)
  def _load_dict(self):
    items = self.pop_mark()
    target = {}
    self._set_items(target, items)
    self.append(target)

  @_opcode(pickle.ADDITEMS)
  def _load_additems(self):
    items = self.pop_mark()
    target = self.stack[-1]
    if type(target) is not set:
      raise CheckpointError(f'ADDITEMS on a {type(target).__name__}, not a set')
    _check_size('set', len(target) + len(items), self._limits)
    for item in items:
      _check_key(item, self._limits)
    target.update(items)

  @_opcode(pickle.FROZENSET)
  def _load_frozenset(self):
    items = self.pop_mark()  # before `self.append`, which pop_mark rebinds
    self.append(self._container(frozenset, (items,), {}))

  @_opcode(pickle.LIST)
  def _load_list(self):
    items = self.pop_mark()
    _check_size('list', len(items), self._limits)
    self.append(items)

  @_opcode(pickle.TUPLE)
  def _load_tuple(self):
    items = self.pop_mark()
    _check_size('tuple', len(items), self._limits)
    self.append(tuple(items))

  # The handlers below take torch's positional arguments; `*_` drops requires_grad, backward
  # hooks, tensor metadata and Python state, none of which a numpy array keeps.

  def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any,
              dtype: Optional[str] = None) -> np.ndarray:
    """An empty array for the tensor, queued in `pending`; `dtype` defaults to the storage's.

    The tensor must lie inside its storage and fit the budget before its array is allocated.
    """
    if not isinstance(storage, _StorageRef):
      raise CheckpointError(f'tensor rebuilt from {_brief(storage)} instead of a storage')
    dtype = dtype or storage.dtype
    shape, strides = _int_tuple(size, 'size'), _int_tuple(stride, 'stride')
    if len(strides) != len(shape) or type(offset) is not int or not 0 <= offset < _MAX_INDEX:
      raise CheckpointError(
          f'malformed tensor: size {_brief(shape)}, stride {_brief(strides)}, offset '
          f'{_brief(offset)}')
    if len(shape) > self._limits.max_ndim:
      raise CheckpointError(f'a tensor of {len(shape)} dimensions, over the limit of '
                            f'{self._limits.max_ndim} (max_ndim)')
    element = np.dtype(_ELEMENT_CODES[dtype])
    numel = 1
    for n in shape:
      numel *= n
    if numel:
      available = storage.nbytes // element.itemsize
      needed = offset + sum((n - 1) * s for n, s in zip(shape, strides)) + 1
      if needed > available:
        raise CheckpointError(
            f'storage {_brief(storage.key)} holds {available} {dtype} elements but a tensor of '
            f'size {list(shape)}, stride {list(strides)} and offset {offset} needs {needed}')
    out_type = np.dtype(np.float32) if dtype == 'bfloat16' else element
    self._budget.tensor(numel * out_type.itemsize)
    out = np.empty(shape, out_type)
    self.pending.setdefault(storage.key, []).append(_PendingTensor(out, dtype, offset, strides))
    return out

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
      raise CheckpointError(f'unsupported tensor dtype {_brief(dtype)}')
    return self._tensor(storage, storage_offset, size, stride, name)

  def _rebuild_parameter(self, data, *_) -> Any:
    return data

  def _rebuild_from_type_v2(self, func, _new_type, args, *_) -> Any:
    # A tensor subclass or a tensor with Python attributes: rebuild the plain tensor, drop the rest.
    if (getattr(func, '__self__', None) is not self or
        getattr(func, '__name__', None) not in _TENSOR_HANDLERS):
      raise CheckpointError(f'refused to rebuild a tensor through {_brief(func)} '
                            f'({_REFUSAL_REASON})')
    return self._call(func, args)

  def _device(self, kind, index=None) -> str:
    if not isinstance(kind, str) or not (index is None or type(index) is int and
                                         0 <= index < _MAX_INDEX):
      raise CheckpointError(f'malformed torch.device{_brief((kind, index))}')
    return kind if index is None else f'{kind}:{index}'

  def _reconstructor(self, cls, *_) -> SkippedObject:
    # How protocols 0 and 1 rebuild an ordinary class instance.
    if not isinstance(cls, _Global):
      raise CheckpointError(f'refused to call copyreg._reconstructor for {_brief(cls)} '
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


def _refuse_extension(_unpickler: _SafeUnpickler) -> None:
  raise CheckpointError('the pickle uses the copyreg extension registry (EXT opcodes)')


for _code in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
  _DISPATCH[_code[0]] = _refuse_extension


def _children(value: Any) -> Optional[List[Any]]:
  """The objects a container holds (an OrderedDict's attributes too); None for a non-container."""
  kind = type(value)
  if kind is dict:
    return [*value.keys(), *value.values()]
  if kind is collections.OrderedDict:
    return [*value.keys(), *value.values(), *vars(value).values()]
  if kind in _CONTAINERS:
    return list(value)
  return None


def _check_structure(root: Any, limits: Limits) -> None:
  """Refuses cycles, nesting deeper than `max_depth` and results a full walk visits over
  `max_walk` objects in; each container is walked once (iteratively)."""
  walked: Dict[int, Tuple[int, int]] = {}  # id -> (depth, objects a full walk visits)
  children = _children(root)
  if children is None:
    return
  # Each frame: [container, its children iterator, deepest child depth, objects visited].
  frames = [[root, iter(children), 0, 1]]
  on_path = {id(root)}
  while frames:
    frame = frames[-1]
    child = next(frame[1], frames)  # `frames` marks the end
    if child is frames:
      frames.pop()
      on_path.discard(id(frame[0]))
      depth, count = frame[2] + 1, frame[3]
      walked[id(frame[0])] = (depth, count)
      if frames:
        frames[-1][2] = max(frames[-1][2], depth)
        frames[-1][3] += count
        if frames[-1][3] > limits.max_walk:
          raise CheckpointError(f'a full walk of the result visits more than {limits.max_walk} '
                                f'objects (max_walk): it shares containers many times over')
      continue
    grandchildren = _children(child)
    if grandchildren is None:
      frame[3] += 1
    elif id(child) in on_path:
      raise CheckpointError('the pickle builds a reference cycle')
    elif id(child) in walked:
      depth, count = walked[id(child)]
      frame[2] = max(frame[2], depth)
      frame[3] += count
    else:
      if len(frames) >= limits.max_depth:
        raise CheckpointError(f'containers nested deeper than {limits.max_depth} levels '
                              f'(max_depth)')
      _check_size(type(child).__name__, len(grandchildren), limits)
      on_path.add(id(child))
      frames.append([child, iter(grandchildren), 0, 1])
      continue
    if frame[3] > limits.max_walk:
      raise CheckpointError(f'a full walk of the result visits more than {limits.max_walk} '
                            f'objects (max_walk): it shares containers many times over')


def _fill(pending: List[_PendingTensor], data: bytes, key: str, byteorder: str) -> None:
  """Copies each pending tensor's elements out of its storage's raw bytes.

  `_tensor` has checked that each tensor lies inside the storage, and the caller that `data`
  holds the whole storage.
  """
  for tensor in pending:
    if not tensor.out.size:
      continue
    element = np.dtype(_ELEMENT_CODES[tensor.dtype]).newbyteorder(byteorder)
    source = np.ndarray(tensor.out.shape, element, buffer=data,
                        offset=tensor.offset * element.itemsize,
                        strides=[s * element.itemsize for s in tensor.strides])
    if tensor.dtype == 'bfloat16':
      source = (source.astype(np.uint32) << 16).view(np.float32)
    tensor.out[...] = source


def _check_record(info: zipfile.ZipInfo, file_size: int, expected_size: Optional[int],
                  max_size: int) -> None:
  """Refuses a record that is compressed, lies outside the file or has the wrong size."""
  if info.compress_type != zipfile.ZIP_STORED:
    raise CheckpointError(f'record {_brief(info.filename)} is compressed (method '
                          f'{info.compress_type}); torch stores records uncompressed')
  if info.file_size != info.compress_size or info.header_offset + info.compress_size > file_size:
    raise CheckpointError(f'record {_brief(info.filename)} declares {info.file_size} bytes '
                          f'({info.compress_size} stored), more than the file holds')
  if expected_size is not None and info.file_size != expected_size:
    raise CheckpointError(f'record {_brief(info.filename)} holds {info.file_size} bytes but '
                          f'its persistent id declares {expected_size} bytes')
  if info.file_size > max_size:
    raise CheckpointError(f'record {_brief(info.filename)} holds {info.file_size} bytes, more '
                          f'than the {max_size} it may')


def _stored_record(archive: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int,
                   max_size: int) -> bytes:
  """A record's bytes, after `_check_record`."""
  _check_record(info, file_size, None, max_size)
  return archive.read(info)


def _load_zip(file, budget: _Budget) -> Any:
  file_size = budget.file_size
  with zipfile.ZipFile(file) as archive:
    infos = archive.infolist()
    if len(infos) > budget.limits.max_storages + 16:
      raise CheckpointError(f'more than {budget.limits.max_storages} records (max_storages)')
    records = {info.filename: info for info in infos}
    pickles = [n for n in records if n.count('/') == 1 and n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise CheckpointError(f'zip archive is not a torch checkpoint: it holds {len(pickles)} '
                            f'<name>/data.pkl records, not one')
    prefix = pickles[0][:-len('data.pkl')]
    byteorder = b'little'
    if prefix + 'byteorder' in records:
      byteorder = _stored_record(archive, records[prefix + 'byteorder'], file_size, 16)
    if byteorder not in (b'little', b'big'):
      raise CheckpointError(f'unknown byte order {byteorder[:20]!r} in {_brief(prefix)}byteorder')
    stored_bytes = 0

    def check_storage(ref: _StorageRef) -> None:
      nonlocal stored_bytes
      info = records.get(f'{prefix}data/{ref.key}')
      if info is None:
        raise CheckpointError(f'data.pkl references storage record '
                              f'{_brief(f"{prefix}data/{ref.key}")}, which the archive lacks')
      try:
        _check_record(info, file_size, ref.nbytes, file_size)
      except CheckpointError as e:
        raise CheckpointError(f'{e} ({ref.numel} {ref.dtype} elements)') from None
      stored_bytes += info.file_size
      if stored_bytes > file_size:
        raise CheckpointError('the storage records overlap: together they hold more bytes than '
                              'the file')

    data_pkl = _stored_record(archive, records[pickles[0]], file_size, file_size)
    source = io.BytesIO(data_pkl)
    unpickler = _SafeUnpickler(_BoundedFile(source, len(data_pkl)), budget, check_storage)
    result = unpickler.load()
    referenced = {f'{prefix}data/{key}' for key in unpickler.storages}
    unreferenced = sorted(n for n in records if n.startswith(f'{prefix}data/')
                          and n not in referenced)
    if unreferenced:
      raise CheckpointError(f'record {_brief(unreferenced[0])} is not referenced by data.pkl '
                            f'({len(unreferenced)} such records)')
    _check_structure(result, budget.limits)
    for key, pending in unpickler.pending.items():
      if any(tensor.out.size for tensor in pending):
        ref = unpickler.storages[key]
        data = _stored_record(archive, records[f'{prefix}data/{key}'], file_size, ref.nbytes)
        _fill(pending, data, key, '<' if byteorder == b'little' else '>')
  return result


def _load_legacy(file, budget: _Budget) -> Any:
  source = _BoundedFile(file, budget.file_size)

  def unpickler() -> _SafeUnpickler:
    return _SafeUnpickler(source, budget)

  magic = unpickler().load()
  if type(magic) is not int or magic != _LEGACY_MAGIC:
    raise CheckpointError('not a torch checkpoint: a pickle without the torch magic number')
  version = unpickler().load()
  if version != _LEGACY_PROTOCOL:
    raise CheckpointError(f'unsupported legacy protocol version {_brief(version)}')
  # sys_info: nothing in it is needed, as storages are always written little-endian.
  unpickler().load()
  main = unpickler()
  result = main.load()
  keys = unpickler().load()
  if type(keys) is not list:
    raise CheckpointError(f'storage key list is a {type(keys).__name__}, not a list')
  if not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
    raise CheckpointError(f'storage key list {_brief(keys)} holds non-strings or duplicates')
  _check_structure(result, budget.limits)
  for key in keys:
    ref = main.storages.get(key)
    if ref is None:
      raise CheckpointError(f'storage {_brief(key)} is listed but never referenced')
    count = source.read(8)
    numel = int.from_bytes(count, 'little', signed=True)
    if len(count) < 8 or numel != ref.numel:
      raise CheckpointError(f'storage {_brief(key)} holds {numel} elements but its persistent '
                            f'id declares {ref.numel}')
    if ref.nbytes > source.remaining():
      raise CheckpointError(f'truncated legacy torch file: storage {_brief(key)} of {numel} '
                            f'elements does not fit in the file')
    pending = main.pending.pop(key, [])
    if any(tensor.out.size for tensor in pending):
      _fill(pending, source.read(ref.nbytes), key, '<')
    else:
      file.seek(ref.nbytes, os.SEEK_CUR)
  if len(keys) != len(main.storages):
    listed = set(keys)
    missing = next(k for k in main.storages if k not in listed)
    raise CheckpointError(f'pickled data references storage {_brief(missing)}, which the file '
                          f'lacks')
  return result


def _checked(reader, file, budget: _Budget, what: str) -> Any:
  """`reader(file, budget)`, with any failure other than a CheckpointError reported as `what`."""
  try:
    return reader(file, budget)
  except CheckpointError:
    raise
  except MemoryError as e:
    raise CheckpointError(f'ran out of memory while reading a file of {budget.file_size} '
                          f'bytes') from e
  except Exception as e:  # pylint: disable=broad-except
    # Corrupt bytes reach the pickle machinery, zipfile and numpy, which raise all kinds of errors.
    # str() of a KeyError is the full repr of its key, which a file can make exponential.
    detail = _brief(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)[:200]
    raise CheckpointError(f'{what} ({type(e).__name__}: {detail})') from e


def load(path: 'str | os.PathLike', limits: Limits = DEFAULT_LIMITS) -> Any:
  """Reads a `torch.save` file without torch and without running code from its pickle.

  Args:
    path: a file written by `torch.save`, in the zip or the legacy format.
    limits: what the file may ask for (see the module docstring).

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
      holds a tensor type this reader does not support, exceeds one of `limits`, or its pickle
      calls anything outside the allow-list (such as `os.system`). The message is one line.
  """
  path = os.fspath(path)
  try:
    with open(path, 'rb') as file:
      budget = _Budget(os.fstat(file.fileno()).st_size, limits)
      head = file.read(4)
      file.seek(0)
      if not head:
        raise CheckpointError('empty file')
      if head == b'PK\x03\x04':
        return _checked(_load_zip, file, budget, 'truncated or corrupt torch zip archive')
      if head[0] == pickle.PROTO[0]:
        return _checked(_load_legacy, file, budget, 'truncated or corrupt legacy torch file')
      raise CheckpointError('not a torch checkpoint: neither a zip archive nor a pickle')
  except CheckpointError as e:
    # One line, although a repr quoted in the message may span several.
    raise CheckpointError(f'{path}: {" ".join(str(e).split())}') from e.__cause__
  except OSError as e:
    raise CheckpointError(f'{path}: cannot read the file ({e.strerror or e})') from e
