"""The checkpoint fuzzer: its seeds, its criteria, a smoke run, its regression corpus replayed."""

import collections
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from video_swin_hub.hub_models import checkpoint
from tools import checkpoint_seeds, fuzz_checkpoint

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CORPUS = os.path.join(_REPO_ROOT, 'tests', 'data', 'checkpoint_corpus')


def _tensors(value, kind, path=''):
  """Path -> every `kind` (torch.Tensor, np.ndarray) in nested dicts, lists and tuples."""
  if isinstance(value, kind):
    return {path: value}
  if isinstance(value, dict):
    items = value.items()
  elif isinstance(value, (list, tuple)):
    items = enumerate(value)
  else:
    return {}
  found = {}
  for key, item in items:
    found.update(_tensors(item, kind, f'{path}/{key}'))
  return found


@pytest.fixture(scope='module')
def seed_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('seeds')
  checkpoint_seeds.write_seeds(str(directory))
  return directory


def test_seeds_cover_every_layout_and_format(seed_dir):
  names = {path[:-len('.pth')] for path in os.listdir(seed_dir)}
  for layout in ('official', 'mmaction2', 'torchvision', 'float16', 'bfloat16', 'views'):
    assert f'{layout}_zip' in names
  for layout in ('official', 'mmaction2', 'torchvision', 'bfloat16', 'views'):
    assert f'{layout}_legacy' in names
  assert all(os.path.getsize(seed_dir / f'{name}.pth') < 16384 for name in names)


def test_seeds_load_as_torch_loads_them(seed_dir):
  for name in sorted(os.listdir(seed_dir)):
    path = seed_dir / name
    ours = _tensors(checkpoint.load(path), np.ndarray)
    with checkpoint_seeds.fake_mmcv():
      theirs = _tensors(torch.load(path, weights_only=False), torch.Tensor)
    assert ours.keys() == theirs.keys(), name
    for key, array in ours.items():
      expected = theirs[key].detach()
      expected = expected.float() if expected.dtype == torch.bfloat16 else expected
      np.testing.assert_array_equal(array, expected.numpy(), err_msg=f'{name} {key}')


def test_check_input_accepts_refusals_and_flags_each_kind_of_finding(tmp_path):
  scratch = str(tmp_path / 'input.pth')

  def refuses(_):
    raise checkpoint.CheckpointError('refused')

  def crashes(_):
    raise KeyError('a reader bug')

  def dawdles(_):
    start = time.process_time()
    while time.process_time() - start < 0.3:
      pass

  def hoards(_):
    return bytearray(8 << 20)

  assert fuzz_checkpoint.check_input(b'x' * 100, scratch, 0.2, refuses) is None
  assert fuzz_checkpoint.check_input(b'x' * 100, scratch, 0.2, checkpoint.load) is None
  found = {name: fuzz_checkpoint.check_input(b'x' * 100, scratch, 0.2, load)
           for name, load in [('crashes', crashes), ('dawdles', dawdles), ('hoards', hoards)]}
  assert found['crashes'] == fuzz_checkpoint.Finding('exception', 'KeyError: a reader bug')
  assert found['dawdles'].kind == 'slow'
  assert found['hoards'].kind == 'memory'
  # 8 MiB for 100 bytes is over the bound; the same for 1 MiB of input is within it.
  assert fuzz_checkpoint.check_input(b'x' * (1 << 20), scratch, 5, hoards) is None


def test_save_finding_names_the_file_by_kind_and_content(tmp_path):
  path = fuzz_checkpoint.save_finding(str(tmp_path), 'slow', b'abc')
  assert os.path.basename(path) == 'slow-ba7816bf8f01cfea.bytes'  # sha256('abc')
  assert open(path, 'rb').read() == b'abc'
  assert os.listdir(tmp_path) == ['slow-ba7816bf8f01cfea.bytes']


def test_smoke_run_executes_and_finds_nothing_on_the_seeds(tmp_path, seed_dir):
  report_path = tmp_path / 'report.json'
  findings = tmp_path / 'findings'
  subprocess.run([sys.executable, '-m', 'tools.fuzz_checkpoint', '--max_time=6',
                  f'--work_dir={tmp_path / "work"}', f'--findings_dir={findings}',
                  f'--seed_dir={seed_dir}', f'--report={report_path}'],
                 cwd=_REPO_ROOT, check=True, capture_output=True, timeout=120)
  report = json.loads(report_path.read_text())
  assert report['executions'] > 100, report
  assert report['coverage_at_start']['cov'] > 100, report
  assert report['coverage_at_end']['ft'] >= report['coverage_at_start']['ft'], report
  assert report['corpus_files'] > 0, report
  assert report['findings'] == [] and not findings.exists(), report


def _corpus_files():
  return sorted(os.listdir(_CORPUS)) if os.path.isdir(_CORPUS) else []


def test_regression_corpus_is_present_and_small():
  files = _corpus_files()
  assert files
  sizes = collections.Counter()
  for name in files:
    sizes[name] = os.path.getsize(os.path.join(_CORPUS, name))
  assert max(sizes.values()) <= 16384 and sum(sizes.values()) < (1 << 20)


@pytest.mark.parametrize('name', _corpus_files())
def test_regression_corpus_input_meets_the_criteria(tmp_path, name):
  with open(os.path.join(_CORPUS, name), 'rb') as file:
    data = file.read()
  assert fuzz_checkpoint.check_input(data, str(tmp_path / 'input.pth'), 2.0) is None
