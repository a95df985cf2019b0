"""Tests for video_swin_hub.hub_models.checkpoint: files written by real `torch.save`, read back without torch."""

import builtins
import collections
import importlib.util
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from video_swin_hub.hub_models import checkpoint
from video_swin_hub.hub_models.checkpoint import CheckpointError, SkippedObject
from tools import checkpoint_seeds
from tools.checkpoint_seeds import Config, ConfigDict

_FORMATS = {'zip': True, 'legacy': False}  # format name -> _use_new_zipfile_serialization
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Call:
  """Pickles as a call `func(*args)`, which `torch.save` records without running it."""

  def __init__(self, func, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


def _save(obj, path, fmt='zip', **kwargs):
  torch.save(obj, path, _use_new_zipfile_serialization=_FORMATS[fmt], **kwargs)
  return path


def _save_under_fake_mmcv(obj, path, fmt='zip', **kwargs):
  """Saves `obj` while Config and ConfigDict claim to live in `mmcv.utils.config`."""
  with checkpoint_seeds.fake_mmcv():
    return _save(obj, path, fmt, **kwargs)


def _rewrite_zip(path, edit):
  """Rewrites the zip at `path` with each record's bytes replaced by `edit(name, data)`.

  `edit` returning None drops the record.
  """
  with zipfile.ZipFile(path) as archive:
    records = {name: archive.read(name) for name in archive.namelist()}
  with zipfile.ZipFile(path, 'w') as archive:
    for name, data in records.items():
      data = edit(name, data)
      if data is not None:
        archive.writestr(name, data)


def _expect_error(path, *fragments):
  """Loads `path`, expecting a one-line CheckpointError naming the file and holding `fragments`."""
  with pytest.raises(CheckpointError) as info:
    checkpoint.load(path)
  message = str(info.value)
  assert '\n' not in message
  assert message.startswith(f'{path}: '), message
  for fragment in fragments:
    assert fragment in message, message
  return message


def _assert_array(actual, expected: np.ndarray):
  assert isinstance(actual, np.ndarray)
  assert actual.dtype == expected.dtype and actual.shape == expected.shape
  assert actual.flags.c_contiguous and actual.flags.owndata
  np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize('fmt', _FORMATS)
def test_dtypes(tmp_path, fmt):
  g = torch.Generator().manual_seed(0)
  tensors = {
      'float32': torch.randn(3, 4, generator=g),
      'float16': torch.randn(5, generator=g).half(),
      'float64': torch.randn(2, 3, 2, generator=g).double(),
      'int64': torch.arange(-3, 4),
      'int32': torch.arange(6, dtype=torch.int32).reshape(2, 3),
      'int16': torch.tensor([-7, 7], dtype=torch.int16),
      'int8': torch.tensor([-128, 127], dtype=torch.int8),
      'uint8': torch.arange(250, 256, dtype=torch.uint8),
      'bool': torch.tensor([[True, False], [False, True]]),
      'complex64': torch.tensor([1 + 2j, -3j], dtype=torch.complex64),
      'uint16': torch.tensor([0, 1, 65535], dtype=torch.uint16),  # `_rebuild_tensor_v3`
      'scalar': torch.tensor(2.5),
      'empty': torch.empty(0, 3),
  }
  loaded = checkpoint.load(_save(tensors, tmp_path / 'tensors.pth', fmt))
  assert loaded.keys() == tensors.keys()
  for name, tensor in tensors.items():
    _assert_array(loaded[name], tensor.numpy())


@pytest.mark.parametrize('fmt', _FORMATS)
def test_bfloat16_becomes_float32(tmp_path, fmt):
  tensors = {'matrix': torch.randn(4, 3).bfloat16(), 'scalar': torch.tensor(-1.5).bfloat16()}
  loaded = checkpoint.load(_save(tensors, tmp_path / 'bf16.pth', fmt))
  for name, tensor in tensors.items():
    _assert_array(loaded[name], tensor.float().numpy())


@pytest.mark.parametrize('fmt', _FORMATS)
def test_views_of_one_storage_become_independent_copies(tmp_path, fmt):
  t = torch.arange(24.).reshape(4, 6)
  views = {'a': t, 'b': t[:, 1::2], 'c': t.T, 'd': t[2], 'e': t[1:, 2:4].T,
           'f': torch.tensor([7.]).expand(3, 2)}  # stride 0
  loaded = checkpoint.load(_save(views, tmp_path / 'views.pth', fmt))
  for name, view in views.items():
    _assert_array(loaded[name], view.numpy())
  loaded['a'][:] = -1
  np.testing.assert_array_equal(loaded['b'], views['b'].numpy())


@pytest.mark.parametrize('fmt', _FORMATS)
def test_parameters_and_tensors_with_python_state(tmp_path, fmt):
  parameter = torch.nn.Parameter(torch.ones(2, 2))
  with_state = torch.nn.Parameter(torch.zeros(3))
  with_state.tag = 'frozen'  # `_rebuild_parameter_with_state`
  tensor = torch.arange(4)
  tensor.note = 'x'  # `_rebuild_from_type_v2`
  loaded = checkpoint.load(_save({'p': parameter, 's': with_state, 't': tensor},
                                 tmp_path / 'params.pth', fmt))
  _assert_array(loaded['p'], np.ones((2, 2), np.float32))
  _assert_array(loaded['s'], np.zeros(3, np.float32))
  _assert_array(loaded['t'], np.arange(4))


@pytest.mark.parametrize('fmt,protocol', [('zip', 2), ('legacy', 2), ('zip', 1), ('zip', 5)])
def test_state_dict_with_metadata(tmp_path, fmt, protocol):
  torch.manual_seed(0)
  model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.BatchNorm3d(4),
                              torch.nn.Flatten(), torch.nn.Linear(8, 2))
  config_dict = ConfigDict(depth=4)
  config_dict.frozen = True
  meta = {'epoch': 30, 'config': Config(), 'config_dict': config_dict,
          'accuracy': np.float64(0.8), 'history': np.arange(3), 'names': ['a', 'b'],
          'pair': (1, 'x'), 'tags': {'video', 'swin'}, 'blob': b'\x00\xff', 'nothing': None,
          'device': torch.device('cuda', 0), 'dtype': torch.float16, 'shape': torch.Size([2, 3])}
  saved = {'state_dict': model.state_dict(), 'meta': meta,
           'optimizer': {'state': {0: {'momentum_buffer': torch.ones(4)}},
                         'param_groups': [{'lr': 0.1, 'params': [0]}]}}

  loaded = checkpoint.load(_save_under_fake_mmcv(saved, tmp_path / 'model.pth', fmt,
                                                 pickle_protocol=protocol))

  assert importlib.util.find_spec('mmcv') is None and 'mmcv' not in sys.modules
  state_dict = loaded['state_dict']
  assert isinstance(state_dict, collections.OrderedDict)
  assert list(state_dict) == list(model.state_dict())
  for name, tensor in model.state_dict().items():
    _assert_array(state_dict[name], tensor.numpy())
  assert state_dict['1.num_batches_tracked'].shape == ()
  _assert_array(loaded['optimizer']['state'][0]['momentum_buffer'], np.ones(4, np.float32))
  assert loaded['optimizer']['param_groups'] == [{'lr': 0.1, 'params': [0]}]

  meta = loaded['meta']
  for key, name in [('config', 'Config'), ('config_dict', 'ConfigDict')]:
    assert isinstance(meta[key], SkippedObject)
    assert (meta[key].module, meta[key].name) == ('mmcv.utils.config', name)
    assert repr(meta[key]) == f'<skipped mmcv.utils.config.{name}>'
  # numpy scalars and arrays: the global named depends on the numpy version and pickle protocol.
  for key in ('accuracy', 'history'):
    assert isinstance(meta[key], SkippedObject) and meta[key].module.startswith('numpy.')
  assert {k: meta[k] for k in ('epoch', 'names', 'pair', 'tags', 'blob', 'nothing')} == {
      'epoch': 30, 'names': ['a', 'b'], 'pair': (1, 'x'), 'tags': {'video', 'swin'},
      'blob': b'\x00\xff', 'nothing': None}
  assert (meta['device'], meta['dtype'], meta['shape']) == ('cuda:0', 'torch.float16', (2, 3))


def test_big_endian_archive(tmp_path):
  path = _save({'w': torch.randn(3, 2, dtype=torch.float64)}, tmp_path / 'big.pth')
  expected = torch.load(path)['w'].numpy()

  def to_big_endian(name, data):
    if name.endswith('/byteorder'):
      return b'big'
    if name.endswith('/data/0'):
      return np.frombuffer(data, '<f8').astype('>f8').tobytes()
    return data

  _rewrite_zip(path, to_big_endian)
  _assert_array(checkpoint.load(str(path))['w'], expected)


def test_load_needs_no_torch(tmp_path):
  path = _save({'w': torch.ones(2, 3), 'meta': {'epoch': 1}}, tmp_path / 'plain.pth')
  script = ("import sys; sys.modules['torch'] = None; from hub_models import checkpoint; "
            f"d = checkpoint.load({str(path)!r}); print(d['w'].sum(), d['meta'])")
  result = subprocess.run([sys.executable, '-c', script], cwd=_REPO_ROOT, capture_output=True,
                          text=True, check=True)
  assert result.stdout.split() == ['6.0', "{'epoch':", '1}']


@pytest.mark.parametrize('fmt', _FORMATS)
@pytest.mark.parametrize('callable_', ['os.system', 'builtins.exec'])
def test_refuses_to_run_code(tmp_path, fmt, callable_):
  marker = tmp_path / 'pwned'
  call = (_Call(os.system, f'touch {marker}') if callable_ == 'os.system' else
          _Call(builtins.exec, f'open({str(marker)!r}, "w").close()'))
  saved = {'state_dict': {'w': torch.ones(2)}, 'meta': {'hooks': [{'after_run': call}]}}
  path = _save(saved, tmp_path / 'evil.pth', fmt)

  qualified = f'{os.system.__module__}.system' if callable_ == 'os.system' else callable_
  _expect_error(path, f'refused to call {qualified} while unpickling')
  assert not marker.exists()


@pytest.mark.parametrize('opcodes', [
    b"(S'touch MARKER'\nios\nsystem\n.",  # INST: MARK, args, module and name inline
    b"(cos\nsystem\nS'touch MARKER'\no.",  # OBJ: MARK, class, args
])
def test_refuses_inst_and_obj(tmp_path, opcodes):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'inst.pth'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('inst/data.pkl', opcodes.replace(b'MARKER', str(marker).encode()))
  _expect_error(path, 'refused to call os.system')
  assert not marker.exists()


@pytest.mark.parametrize('fmt', _FORMATS)
def test_truncated_files(tmp_path, fmt):
  full = _save({'state_dict': {'w': torch.randn(64, 8), 'b': torch.zeros(8)}, 'meta': {'x': 1}},
               tmp_path / 'full.pth', fmt).read_bytes()
  path = tmp_path / 'cut.pth'
  for size in [1, 3, 10, 40, 100, len(full) // 3, len(full) // 2, len(full) - 100, len(full) - 1]:
    path.write_bytes(full[:size])
    _expect_error(path)


@pytest.mark.parametrize('content,fragment', [
    (b'', 'empty file'),
    (np.random.default_rng(0).bytes(4096), 'not a torch checkpoint'),
    (b'model weights, see README\n', 'not a torch checkpoint'),
    (pickle.dumps({'w': [1.0, 2.0]}), 'not a torch checkpoint'),
])
def test_not_a_checkpoint(tmp_path, content, fragment):
  path = tmp_path / 'not.pth'
  path.write_bytes(content)
  _expect_error(path, fragment)


def test_zip_without_data_pkl(tmp_path):
  path = tmp_path / 'other.zip'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('notes/readme.txt', 'hello')
  _expect_error(path, 'not a torch checkpoint')


def test_missing_file(tmp_path):
  _expect_error(tmp_path / 'absent.pth', 'cannot read the file', 'No such file')


def test_missing_storage_record(tmp_path):
  path = _save({'a': torch.ones(3), 'b': torch.zeros(2)}, tmp_path / 'partial.pth')
  _rewrite_zip(path, lambda name, data: None if name.endswith('/data/1') else data)
  _expect_error(path, "storage record 'partial/data/1'", 'lacks')


def test_storage_record_shorter_than_its_persistent_id(tmp_path):
  path = _save({'a': torch.ones(3, 4)}, tmp_path / 'short.pth')
  _rewrite_zip(path, lambda name, data: data[:20] if name.endswith('/data/0') else data)
  _expect_error(path, "record 'short/data/0' holds 20 bytes", 'declares 48 bytes',
                '12 float32 elements')


def test_unknown_storage_type(tmp_path):
  path = _save({'a': torch.ones(3)}, tmp_path / 'odd.pth')
  _rewrite_zip(path, lambda name, data: data.replace(b'FloatStorage', b'FancyStorage'))
  _expect_error(path, 'unknown storage type', 'torch.FancyStorage')
