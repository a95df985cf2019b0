"""Writes small real `torch.save` files in every layout and format video_swin_hub.hub_models.checkpoint reads.

They seed tools/fuzz_checkpoint.py: official, mmaction2 and torchvision state dicts, each in the
zip and the legacy format, with float16 and bfloat16 storages, several views of one storage,
pickle protocols 1, 2 and 5, `_rebuild_tensor_v3` dtypes, parameters and tensors with Python
state, mmcv-style metadata objects and a big-endian archive. Tensors have a few elements, so each
file is a few KB.

  python -m tools.checkpoint_seeds --output_dir=/tmp/seeds

Needs torch (a test-time requirement); the reader itself never imports it.
"""

import collections
import contextlib
import io
import os
import sys
import types
import zipfile
from typing import Callable, Dict, Iterator, List

from absl import app, flags
import numpy as np
import torch


class Config:
  """Plays mmcv's Config in checkpoint metadata; pickled under a module that does not exist."""

  def __init__(self):
    self.filename = 'swin_tiny.py'
    self.cfg = {'model': {'type': 'Recognizer3D'}, 'lr': 0.1, 'weights': torch.ones(2)}


class ConfigDict(dict):
  """Plays mmcv's ConfigDict: a dict subclass, pickled with its items and its attributes."""


_FAKE_MMCV_MODULE = 'mmcv.utils.config'


@contextlib.contextmanager
def fake_mmcv() -> Iterator[None]:
  """While active, Config and ConfigDict claim to live in `mmcv.utils.config`.

  Pickling checks that a class can be found under its module, so the module exists only inside
  the block; afterwards importing it fails, which is what a reader must never try.
  """
  module = types.ModuleType(_FAKE_MMCV_MODULE)
  names = ('mmcv', 'mmcv.utils', _FAKE_MMCV_MODULE)
  saved = {name: sys.modules.get(name) for name in names}
  own_module = {cls: cls.__module__ for cls in (Config, ConfigDict)}
  try:
    for cls in (Config, ConfigDict):
      cls.__module__ = module.__name__
      setattr(module, cls.__name__, cls)
    sys.modules.update({'mmcv': types.ModuleType('mmcv'),
                        'mmcv.utils': types.ModuleType('mmcv.utils'), module.__name__: module})
    yield
  finally:
    for cls, name in own_module.items():
      cls.__module__ = name
    for name, previous in saved.items():
      if previous is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = previous


def _backbone_state(final_norm: str) -> Dict[str, torch.Tensor]:
  """A few official Video Swin keys with tiny tensors (C=4, one block, 2 classes)."""
  g = torch.Generator().manual_seed(0)
  shapes = {
      'backbone.patch_embed.proj.weight': (4, 3, 2, 2, 2),
      'backbone.patch_embed.proj.bias': (4,),
      'backbone.layers.0.blocks.0.attn.relative_position_bias_table': (5, 1),
      'backbone.layers.0.blocks.0.attn.qkv.weight': (12, 4),
      'backbone.layers.0.downsample.reduction.weight': (8, 16),
      f'backbone.{final_norm}.weight': (4,),
      'cls_head.fc_cls.weight': (2, 4),
      'cls_head.fc_cls.bias': (2,),
  }
  state = collections.OrderedDict(
      (name, torch.randn(*shape, generator=g)) for name, shape in shapes.items())
  state['backbone.layers.0.blocks.0.attn.relative_position_index'] = torch.arange(4).reshape(2, 2)
  return state


def _torchvision_state() -> Dict[str, torch.Tensor]:
  """torchvision `swin3d_*` key names, from a real module's state_dict (with `_metadata`)."""
  module = torch.nn.Sequential(collections.OrderedDict([
      ('features', torch.nn.Sequential(torch.nn.Conv3d(3, 2, 1), torch.nn.LayerNorm(2))),
      ('norm', torch.nn.LayerNorm(2)),
      ('head', torch.nn.Linear(2, 3)),
  ]))
  return module.state_dict()


def _views() -> Dict[str, torch.Tensor]:
  t = torch.arange(24.).reshape(4, 6)
  return {'a': t, 'b': t[:, 1::2], 'c': t.T, 'd': t[2], 'e': t[1:, 2:4].T,
          'f': torch.tensor([7.]).expand(3, 2)}


def _odd_tensors() -> Dict[str, torch.Tensor]:
  with_state = torch.nn.Parameter(torch.zeros(3))
  with_state.tag = 'frozen'  # `_rebuild_parameter_with_state`
  tensor = torch.arange(4)
  tensor.note = 'x'  # `_rebuild_from_type_v2`
  return {'uint16': torch.tensor([0, 1, 65535], dtype=torch.uint16),  # `_rebuild_tensor_v3`
          'parameter': torch.nn.Parameter(torch.ones(2, 2)), 'with_state': with_state,
          'with_attr': tensor, 'scalar': torch.tensor(2.5), 'empty': torch.empty(0, 3),
          'bool': torch.tensor([True, False]), 'complex': torch.tensor([1 + 2j]),
          'int8': torch.tensor([-128, 127], dtype=torch.int8)}


def _meta() -> Dict[str, object]:
  config_dict = ConfigDict(depth=4)
  config_dict.frozen = True
  return {'epoch': 30, 'config': Config(), 'config_dict': config_dict,
          'accuracy': np.float64(0.8), 'history': np.arange(3), 'names': ['a', 'b'],
          'pair': (1, 'x'), 'tags': {'video', 'swin'}, 'blob': b'\x00\xff', 'nothing': None,
          'device': torch.device('cuda', 0), 'dtype': torch.float16, 'shape': torch.Size([2, 3])}


def _to_big_endian(data: bytes) -> bytes:
  """The zip archive `data` with its byteorder record set to big and its storages swapped."""
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    records = {name: archive.read(name) for name in archive.namelist()}
  out = io.BytesIO()
  with zipfile.ZipFile(out, 'w') as archive:
    for name, record in records.items():
      if name.endswith('/byteorder'):
        record = b'big'
      elif '/data/' in name:
        record = np.frombuffer(record, '<f8').astype('>f8').tobytes()
      archive.writestr(name, record)
  return out.getvalue()


def _saved(obj, protocol: int = 2, zipped: bool = True) -> bytes:
  buffer = io.BytesIO()
  with fake_mmcv():
    torch.save(obj, buffer, pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
  return buffer.getvalue()


def seeds() -> Dict[str, bytes]:
  """Seed name -> the bytes of a `torch.save` file."""
  official = {'meta': _meta(), 'state_dict': _backbone_state('norm')}
  mmaction2 = {'meta': {'mmaction_version': '1.2.0', 'dataset_meta': {'classes': ['a', 'b']},
                        'config': Config()},
               'state_dict': _backbone_state('norm3'),
               'optimizer': {'state': {0: {'momentum_buffer': torch.ones(4)}},
                             'param_groups': [{'lr': 0.1, 'params': [0]}]}}
  half = {k: v.half() for k, v in _backbone_state('norm').items() if v.is_floating_point()}
  bf16 = {k: v.bfloat16() for k, v in _backbone_state('norm').items() if v.is_floating_point()}
  makers: Dict[str, Callable[[], bytes]] = {
      'official_zip': lambda: _saved(official),
      'official_legacy': lambda: _saved(official, zipped=False),
      'official_zip_protocol1': lambda: _saved(official, protocol=1),
      'official_zip_protocol5': lambda: _saved(official, protocol=5),
      'mmaction2_zip': lambda: _saved(mmaction2),
      'mmaction2_legacy': lambda: _saved(mmaction2, zipped=False),
      'torchvision_zip': lambda: _saved(_torchvision_state()),
      'torchvision_legacy': lambda: _saved(_torchvision_state(), zipped=False),
      'float16_zip': lambda: _saved({'state_dict': half}),
      'bfloat16_zip': lambda: _saved({'state_dict': bf16}),
      'bfloat16_legacy': lambda: _saved({'state_dict': bf16}, zipped=False),
      'views_zip': lambda: _saved(_views()),
      'views_legacy': lambda: _saved(_views(), zipped=False),
      'odd_tensors_zip': lambda: _saved(_odd_tensors()),
      # torch cannot read back an untyped storage (uint16) in the legacy format.
      'odd_tensors_legacy': lambda: _saved(
          {k: v for k, v in _odd_tensors().items() if k != 'uint16'}, zipped=False),
      'big_endian_zip': lambda: _to_big_endian(_saved({'w': torch.randn(3, 2).double()})),
  }
  return {name: make() for name, make in makers.items()}


def write_seeds(directory: str) -> List[str]:
  """Writes each seed as `<directory>/<name>.pth`; returns the paths."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for name, data in seeds().items():
    path = os.path.join(directory, f'{name}.pth')
    with open(path, 'wb') as file:
      file.write(data)
    paths.append(path)
  return paths


_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Folder to write the seed files into.',
                                  required=True)


def main(argv):
  del argv
  for path in write_seeds(_OUTPUT_DIR.value):
    print(f'{path}\t{os.path.getsize(path)} bytes')


if __name__ == '__main__':
  app.run(main)
