"""Hand-built hostile checkpoints: each is refused (or loaded) within seconds and a memory bound.

The bound is the one video_swin_hub.hub_models.checkpoint states (`MEMORY_BYTES_PER_FILE_BYTE` x the file's size
+ 2 MiB, measured with tracemalloc through tools.fuzz_checkpoint.measure); the time limit,
`_SECONDS`, applies to an untraced load. Files are built from real `torch.save` output, edited,
or pickled with a Pickler that writes the persistent ids torch writes, so each one differs from a
legitimate file in one way.
"""

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from video_swin_hub.hub_models import checkpoint
from video_swin_hub.hub_models.checkpoint import CheckpointError, Limits
from tools import fuzz_checkpoint

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SECONDS = 5.0


class _Storage:
  """Pickles as the persistent id of a storage: ('storage', <storage class>, key, 'cpu', numel)."""

  def __init__(self, key, numel, storage_class=torch.FloatStorage):
    self.key, self.numel, self.storage_class = key, numel, storage_class


class _Call:
  """Pickles as `func(*args)` (REDUCE), as torch pickles a tensor rebuild."""

  def __init__(self, func, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


def _tensor(storage, size, stride, offset=0):
  return _Call(torch._utils._rebuild_tensor_v2, storage, offset, tuple(size), tuple(stride),
               False, {})


class _TorchPickler(pickle.Pickler):

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ('storage', obj.storage_class, obj.key, 'cpu', obj.numel)
    return None


def _pickled(obj, protocol=2):
  buffer = io.BytesIO()
  _TorchPickler(buffer, protocol=protocol).dump(obj)
  return buffer.getvalue()


def _archive(path, data_pkl, records=None, compression=zipfile.ZIP_STORED):
  """Writes a zip checkpoint: `archive/data.pkl` and `archive/data/<key>` for each record."""
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', data_pkl, compress_type=compression)
    archive.writestr('archive/byteorder', 'little')
    for key, data in (records or {}).items():
      archive.writestr(f'archive/data/{key}', data, compress_type=compression)
  return path


def _bounded_load(path, limits=checkpoint.DEFAULT_LIMITS):
  """Loads `path` twice, asserting the time limit (untraced) and the stated memory bound (under
  tracemalloc); returns the traced Measurement."""
  load = lambda p: checkpoint.load(p, limits)
  timed = fuzz_checkpoint.measure(str(path), load, trace=False)
  assert timed.seconds < _SECONDS, f'{timed.seconds:.1f} s'
  run = fuzz_checkpoint.measure(str(path), load)
  size = os.path.getsize(path)
  assert run.peak_bytes <= fuzz_checkpoint.memory_bound(size), (run.peak_bytes, size)
  assert type(run.error) is type(timed.error)
  return run


def _refused(path, *fragments, limits=checkpoint.DEFAULT_LIMITS):
  """Asserts a one-line CheckpointError naming the file and holding `fragments`, within bounds."""
  run = _bounded_load(path, limits)
  assert isinstance(run.error, CheckpointError), run.error
  message = str(run.error)
  assert '\n' not in message and message.startswith(f'{path}: '), message
  assert len(message) < len(str(path)) + 400, message
  for fragment in fragments:
    assert fragment in message, message
  return message


def _doubling_list(levels):
  """A list holding the previous level twice: 2**levels elements when walked, ~10 bytes a level."""
  value = []
  for _ in range(levels):
    value = [value, value]
  return value


# Exponential reprs.

@pytest.mark.parametrize('where', ['size', 'stride', 'persistent_id', 'storage'])
def test_exponential_repr_in_a_message_is_bounded(tmp_path, where):
  deep = _doubling_list(40)
  storage = _Storage('0', 4)
  obj = {
      'size': lambda: _tensor(storage, deep, [1]),
      'stride': lambda: _tensor(storage, [2], deep),
      'persistent_id': lambda: _Storage(deep, 4),
      'storage': lambda: _tensor(deep, [2], [1]),
  }[where]()
  data_pkl = _pickled({'w': obj})
  assert len(data_pkl) < 1000
  records = {'0': bytes(16)} if where != 'persistent_id' else {}
  fragment = {'size': 'malformed tensor size', 'stride': 'malformed tensor stride',
              'persistent_id': 'malformed persistent id', 'storage': 'instead of a storage'}
  _refused(_archive(tmp_path / 'repr.pth', data_pkl, records), fragment[where])


def test_exponential_walk_of_the_result_is_refused(tmp_path):
  path = _archive(tmp_path / 'walk.pth', _pickled({'state_dict': _doubling_list(40)}))
  _refused(path, 'max_walk')


def test_shared_containers_within_the_walk_limit_load(tmp_path):
  path = _archive(tmp_path / 'shared.pth', _pickled({'state_dict': _doubling_list(10)}))
  loaded = _bounded_load(path).result
  assert loaded['state_dict'] == _doubling_list(10)


# Strides and views.

def test_stride_zero_tensor_asking_for_16_gib_is_refused(tmp_path):
  storage = _Storage('0', 1)
  path = _archive(tmp_path / 'stride0.pth',
                  _pickled({'w': _tensor(storage, [1 << 16, 1 << 16], [0, 0])}), {'0': bytes(4)})
  assert os.path.getsize(path) < 1000
  _refused(path, 'array_bytes_per_file_byte')


def test_overlapping_strides_beyond_the_budget_are_refused(tmp_path):
  storage = _Storage('0', 2000)
  path = _archive(tmp_path / 'overlap.pth',
                  _pickled({'w': _tensor(storage, [1000, 1000], [1, 1])}), {'0': bytes(8000)})
  _refused(path, 'array_bytes_per_file_byte', 'over the limit of 4 x the file')


def test_many_full_views_of_one_storage_are_refused(tmp_path):
  storage = _Storage('0', 1 << 18)  # 1 MiB
  views = [_tensor(storage, [1 << 18], [1]) for _ in range(1000)]  # 1 GiB as copies
  path = _archive(tmp_path / 'views.pth', _pickled({'views': views}), {'0': bytes(1 << 20)})
  _refused(path, 'array_bytes_per_file_byte')


def test_overlapping_view_within_the_budget_loads_as_torch_reads_it(tmp_path):
  base = torch.arange(10.)
  views = {'windows': base.as_strided((4, 4), (2, 1), 0), 'repeat': base[:1].expand(5, 3)}
  path = tmp_path / 'windows.pth'
  torch.save(views, path)
  loaded = _bounded_load(path).result
  for name, view in views.items():
    np.testing.assert_array_equal(loaded[name], view.numpy())
    assert loaded[name].flags.owndata


def test_tensor_past_the_end_of_its_storage_is_refused(tmp_path):
  storage = _Storage('0', 12)
  path = _archive(tmp_path / 'past.pth', _pickled({'w': _tensor(storage, [3, 4], [4, 1], 1)}),
                  {'0': bytes(48)})
  _refused(path, "storage '0' holds 12 float32 elements", 'needs 13')


# Records.

def _torch_archive(tmp_path):
  path = tmp_path / 'real.pth'
  torch.save({'a': torch.ones(64), 'b': torch.zeros(2, 3)}, path)
  return path


def _rezip(path, edit, compression=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path) as archive:
    records = {name: archive.read(name) for name in archive.namelist()}
  with zipfile.ZipFile(path, 'w') as archive:
    for name, data in edit(records).items():
      archive.writestr(name, data, compress_type=compression)
  return path


def test_compressed_storage_records_are_refused(tmp_path):
  path = _rezip(_torch_archive(tmp_path), lambda records: records, zipfile.ZIP_DEFLATED)
  _refused(path, 'is compressed (method 8)', 'torch stores records uncompressed')


def test_zip_bomb_data_pkl_is_refused_without_inflating_it(tmp_path):
  bomb = pickle.dumps(b'\0' * (16 << 20), protocol=4)  # 16 MiB, deflates to ~16 KiB
  path = _archive(tmp_path / 'bomb.pth', bomb, compression=zipfile.ZIP_DEFLATED)
  assert os.path.getsize(path) < (1 << 20)
  _refused(path, "record 'archive/data.pkl' is compressed")


def test_record_longer_than_its_persistent_id_is_refused(tmp_path):
  path = _archive(tmp_path / 'long.pth', _pickled({'w': _tensor(_Storage('0', 3), [3], [1])}),
                  {'0': bytes(4 << 10)})
  _refused(path, "record 'archive/data/0' holds 4096 bytes", 'declares 12 bytes')


def test_persistent_id_declaring_more_than_its_record_is_refused(tmp_path):
  path = _archive(tmp_path / 'big.pth',
                  _pickled({'w': _tensor(_Storage('0', 1 << 40), [1 << 20], [1])}),
                  {'0': bytes(12)})
  _refused(path, "record 'archive/data/0' holds 12 bytes", f'declares {4 << 40} bytes')


def test_record_declaring_more_bytes_than_the_file_is_refused(tmp_path):
  path = _archive(tmp_path / 'header.pth', _pickled({'w': _tensor(_Storage('0', 3), [3], [1])}),
                  {'0': bytes(12)})
  data = bytearray(path.read_bytes())
  # The storage record's central directory entry, whose compressed and uncompressed sizes follow.
  entry = data.index(b'PK\x01\x02')
  while not data[entry + 46:].startswith(b'archive/data/0'):
    entry = data.index(b'PK\x01\x02', entry + 4)
  data[entry + 20:entry + 28] = struct.pack('<II', 0x7FFFFFFF, 0x7FFFFFFF)
  path.write_bytes(bytes(data))
  _refused(path, "record 'archive/data/0' declares 2147483647 bytes", 'more than the file holds')


def test_one_storage_declared_with_two_sizes_is_refused(tmp_path):
  obj = {'a': _tensor(_Storage('0', 3), [3], [1]), 'b': _tensor(_Storage('0', 30), [3], [1])}
  path = _archive(tmp_path / 'twice.pth', _pickled(obj), {'0': bytes(12)})
  _refused(path, "storage '0' is declared both as 3 float32 and as 30 float32 elements")


def test_unreferenced_record_is_refused(tmp_path):
  path = _rezip(_torch_archive(tmp_path),
                lambda records: {**records, 'real/data/7': bytes(1 << 16)})
  _refused(path, "record 'real/data/7' is not referenced by data.pkl")


def test_legacy_element_count_unlike_the_persistent_id_is_refused(tmp_path):
  path = tmp_path / 'legacy.pth'
  torch.save({'w': torch.ones(3)}, path, _use_new_zipfile_serialization=False)
  data = path.read_bytes()
  count = struct.pack('<q', 3) + struct.pack('<f', 1.0) * 3
  assert data.endswith(count)
  path.write_bytes(data[:-len(count)] + struct.pack('<q', 1 << 40) + data[-12:])
  _refused(path, 'holds 1099511627776 elements but its persistent id declares 3')


# Nesting and container sizes.

def test_deep_nesting_is_refused(tmp_path):
  depth = 100_000
  # EMPTY_LIST pushes `depth` lists; APPEND puts each into the one below it.
  data_pkl = b'\x80\x02' + b']' * depth + b'a' * (depth - 1) + b'.'
  _refused(_archive(tmp_path / 'deep.pth', data_pkl), 'nested deeper than 64 levels (max_depth)')


@pytest.mark.parametrize('depth,refused', [(64, False), (65, True)])
def test_nesting_limit_is_64_levels(tmp_path, depth, refused):
  value = []
  for _ in range(depth - 1):
    value = [value]
  run = _bounded_load(_archive(tmp_path / 'nested.pth', _pickled(value)))
  assert isinstance(run.error, CheckpointError) == refused, run.error


def test_reference_cycle_is_refused(tmp_path):
  cycle = {'name': 'loop'}
  cycle['self'] = [cycle]
  _refused(_archive(tmp_path / 'cycle.pth', _pickled({'meta': cycle})), 'reference cycle')


def test_deep_tuple_as_a_dict_key_is_refused(tmp_path):
  depth = 50_000
  # EMPTY_TUPLE, then TUPLE1 `depth` times, then {key: None}.
  data_pkl = b'\x80\x02}(' + b')' + b'\x85' * depth + b'Nu.'
  _refused(_archive(tmp_path / 'key.pth', data_pkl), 'max_key_items')


def test_key_sharing_one_wide_tuple_over_levels_is_refused(tmp_path):
  # Level 0 is 100 zeros; each of 7 levels holds the one below 100 times (MARK, BINGET x 100,
  # TUPLE, BINPUT): hashing the key would visit 100**8 elements. Built from opcodes, as Python
  # would hash the key to build the dict.
  data_pkl = b'\x80\x02}(' + b'K\x00' * 100 + b'tq\x00'
  for level in range(1, 8):
    # POP the level below (kept in the memo), then push 100 references to it.
    data_pkl += b'0(' + (b'h' + bytes([level - 1])) * 100 + b'tq' + bytes([level])
  data_pkl += b'K\x01s.'
  assert len(data_pkl) < 2000
  _refused(_archive(tmp_path / 'wide_key.pth', data_pkl), 'more than 1024 items', 'max_key_items')


def test_small_tuple_keys_load(tmp_path):
  value = {(1, 'a'): 1, ((2, 3), None, b'x'): 2, frozenset([(4, 5)]): 3}
  path = tmp_path / 'keys.pth'
  torch.save({k: v for k, v in value.items() if not isinstance(k, frozenset)}, path)
  assert _bounded_load(path).result == {(1, 'a'): 1, ((2, 3), None, b'x'): 2}


def test_list_over_a_million_items_is_refused(tmp_path):
  count = (1 << 20) + 1
  data_pkl = b'\x80\x02](' + b'N' * count + b'e.'
  _refused(_archive(tmp_path / 'long_list.pth', data_pkl),
           'list of more than 1048576 items (max_container_items)')


@pytest.mark.parametrize('kind,data_pkl,fragment', [
    ('dict', b'\x80\x02}(' + b'K\x01N' * 11 + b'u.', 'a dict of more than 10 items'),
    ('set', b'\x80\x04\x8f(' + b''.join(b'K' + bytes([i]) for i in range(11)) + b'\x90.',
     'a set of more than 10 items'),
    ('tuple', b'\x80\x02(' + b'N' * 11 + b't.', 'a tuple of more than 10 items'),
])
def test_container_limits_apply_to_every_container(tmp_path, kind, data_pkl, fragment):
  _refused(_archive(tmp_path / f'{kind}.pth', data_pkl), fragment, '(max_container_items)',
           limits=Limits(max_container_items=10))


def test_opcode_limit(tmp_path):
  data_pkl = b'\x80\x02' + b'N0' * 2000 + b'N.'
  _refused(_archive(tmp_path / 'ops.pth', data_pkl), 'limit of 1000 opcodes (max_pickle_ops)',
           limits=Limits(max_pickle_ops=1000))


def test_tensor_and_storage_count_limits(tmp_path):
  storages = {str(i): bytes(4) for i in range(20)}
  obj = [_tensor(_Storage(str(i), 1), [1], [1]) for i in range(20)]
  path = _archive(tmp_path / 'count.pth', _pickled(obj), storages)
  _refused(path, 'more than 10 tensors (max_tensors)', limits=Limits(max_tensors=10))
  _refused(path, 'more than 10 storages (max_storages)', limits=Limits(max_storages=10))


def test_distinct_global_limit(tmp_path):
  data_pkl = b'\x80\x02' + b''.join(b'cm\ng%d\n0' % i for i in range(5000)) + b'N.'
  _refused(_archive(tmp_path / 'globals.pth', data_pkl), 'more than 4096 distinct globals')


@pytest.mark.parametrize('key,fragment', [
    (b'\x8a\x09' + (((1 << 61) - 1) * 3).to_bytes(9, 'little'), 'of magnitude 2**61 or more'),
    (b'G' + struct.pack('>d', 1.5), 'of type float'),
])
def test_dict_keys_that_could_collide_are_refused(tmp_path, key, fragment):
  # With 50000 keys k * (2**61 - 1), all of hash 0, inserting would take ~10**9 comparisons.
  data_pkl = b'\x80\x02}(' + key + b'Nu.'
  _refused(_archive(tmp_path / 'keys.pth', data_pkl), fragment)


def test_hash_flood_with_colliding_int_keys_is_refused_quickly(tmp_path):
  keys = b''.join(b'\x8a\x0c' + (k * ((1 << 61) - 1)).to_bytes(12, 'little') + b'N'
                  for k in range(1, 50_001))
  _refused(_archive(tmp_path / 'flood.pth', b'\x80\x02}(' + keys + b'u.'), '2**61 or more')


# Allocation before reading.

# BINBYTES8, BINUNICODE8, BYTEARRAY8
@pytest.mark.parametrize('opcode', [b'\x8e', b'\x8d', b'\x96'])
def test_declared_string_lengths_allocate_nothing_up_front(tmp_path, opcode):
  path = tmp_path / 'legacy_string.pth'
  path.write_bytes(b'\x80\x04' + opcode + struct.pack('<Q', 1 << 40) + b'abc')
  _refused(path)


def test_huge_memo_index_allocates_nothing(tmp_path):
  data_pkl = b'\x80\x02Nr\xff\xff\xff\xff.'  # LONG_BINPUT 2**32 - 1
  assert _bounded_load(_archive(tmp_path / 'memo.pth', data_pkl)).result is None


def test_memory_error_is_reported_as_such(tmp_path):
  path = tmp_path / 'large.pth'
  torch.save({'w': torch.zeros(16 << 20)}, path)  # 64 MiB
  script = (
      'import resource, sys\n'
      'from hub_models import checkpoint\n'
      'vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024\n'
      'resource.setrlimit(resource.RLIMIT_AS, (vm + (32 << 20), resource.RLIM_INFINITY))\n'
      'try:\n'
      f'  checkpoint.load({str(path)!r})\n'
      'except checkpoint.CheckpointError as e:\n'
      '  print(e)\n')
  result = subprocess.run([sys.executable, '-c', script], cwd=_REPO_ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
  assert 'ran out of memory while reading a file of' in result.stdout, result


# Calls and opcodes outside the allow-list.

@pytest.mark.parametrize('data_pkl,fragment', [
    (b'\x80\x02]K\x01K\x02s.', 'SETITEMS on a list'),
    (b'\x80\x02}Na.', 'APPENDS to a dict'),
    (b'\x80\x02]}b.', 'refused to set the state of a list'),
    (b'\x80\x02\x82\x01.', 'extension registry'),
    (b'\x80\x02\xff.', 'invalid pickle opcode 0xff'),
    (b'\x80\x02N', 'without a STOP opcode'),
    (b'\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}b.', 'refused to set the state of a method'),
])
def test_structural_refusals(tmp_path, data_pkl, fragment):
  _refused(_archive(tmp_path / 'odd.pth', data_pkl), fragment)
