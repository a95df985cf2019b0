"""Coverage-guided fuzzer (atheris, i.e. libFuzzer) for video_swin_hub.hub_models.checkpoint.load.

  nice -n 19 python -m tools.fuzz_checkpoint --max_time=1800 --work_dir=/tmp/fuzz_checkpoint

Seeds are real `torch.save` files in every layout and format the reader supports
(tools/checkpoint_seeds.py). Each input is written to a scratch file and loaded; it is a finding
when `load` (`check_input`):
  - raises anything but CheckpointError (`exception`),
  - takes more than --per_input_seconds of CPU time (`slow`), or
  - raises the traced heap (tracemalloc, numpy's arrays included) by more than
    checkpoint.MEMORY_BYTES_PER_FILE_BYTE x the input's size + 2 MiB (`memory`).
A hang or a blow-up in C code, which no in-process check sees, is caught by libFuzzer's own caps
(-timeout, -rss_limit_mb): it kills the fuzzing process and leaves the input as an artifact.

Every finding is saved into --findings_dir (default: the regression corpus that
tests/test_checkpoint_fuzz.py replays) as `<kind>-<sha256 prefix>.bytes` (raw reader inputs, most
of them not valid checkpoints). Zip inputs are mutated inside their records half of the time
(re-zipped, so that CRC checks do not reject every mutation of data.pkl). The fuzzing runs in a child process, restarted after a libFuzzer kill,
until --max_time is spent. The working corpus in --work_dir persists between runs.

With --merge_into=tests/data/checkpoint_corpus it then adds to the regression corpus the fewest
working-corpus inputs that reach coverage the corpus lacks (libFuzzer -merge=1).

Prints the executions, the coverage (libFuzzer's `cov` edges and `ft` features) when the seeds
were loaded and at the end, the corpus size and the findings, and writes them as JSON to
--report when given.
"""

import dataclasses
import hashlib
import importlib
import io
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
from typing import Callable, Dict, List, Optional

from absl import app, flags

from video_swin_hub.hub_models import checkpoint

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FINDINGS_DIR = os.path.join(_REPO_ROOT, 'tests', 'data', 'checkpoint_corpus')
# Memory a load may add beyond the per-byte factor: numpy's and zipfile's fixed costs.
MEMORY_ALLOWANCE = 2 << 20


@dataclasses.dataclass(frozen=True)
class Finding:
  kind: str  # 'exception', 'slow' or 'memory'
  detail: str


@dataclasses.dataclass(frozen=True)
class Measurement:
  """One load: what it returned or raised, its wall and CPU time, how far it raised the heap."""
  result: object
  error: Optional[BaseException]
  seconds: float
  cpu_seconds: float
  peak_bytes: int


def measure(path: str, load: Callable[[str], object] = checkpoint.load,
            trace: bool = True) -> Measurement:
  """Runs `load(path)`, catching any Exception; under tracemalloc (numpy's arrays included)
  unless `trace` is False (then `peak_bytes` is 0), as tracing slows allocation several times."""
  tracing = tracemalloc.is_tracing()
  if trace and not tracing:
    tracemalloc.start()
  if trace:
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
  start, cpu_start = time.monotonic(), time.process_time()
  result, error = None, None
  try:
    result = load(path)
  except Exception as e:  # pylint: disable=broad-except
    error = e
  seconds, cpu_seconds = time.monotonic() - start, time.process_time() - cpu_start
  peak = tracemalloc.get_traced_memory()[1] - base if trace else 0
  if trace and not tracing:
    tracemalloc.stop()
  return Measurement(result, error, seconds, cpu_seconds, peak)


def memory_bound(size: int) -> int:
  """The most a load of a `size`-byte file may raise the traced heap by (module docstring)."""
  return checkpoint.MEMORY_BYTES_PER_FILE_BYTE * size + MEMORY_ALLOWANCE


def check_input(data: bytes, scratch_path: str, per_input_seconds: float,
                load: Callable[[str], object] = checkpoint.load) -> Optional[Finding]:
  """Loads `data` (written to `scratch_path`) with `load`; a Finding when it breaks a criterion."""
  with open(scratch_path, 'wb') as file:
    file.write(data)
  run = measure(scratch_path, load)
  if run.error is not None and not isinstance(run.error, checkpoint.CheckpointError):
    # Only a string argument is quoted: str() of a KeyError holding a deep tuple is huge.
    args = run.error.args
    detail = args[0][:200] if args and isinstance(args[0], str) else ''
    return Finding('exception', f'{type(run.error).__name__}: {detail}')
  # CPU time: the fuzzer runs at low priority on shared cores, where wall time means little.
  if run.cpu_seconds > per_input_seconds:
    return Finding('slow', f'{run.cpu_seconds:.1f} CPU s for {len(data)} bytes')
  if run.peak_bytes > memory_bound(len(data)):
    return Finding('memory', f'{run.peak_bytes} bytes for {len(data)} bytes '
                             f'(allowed {memory_bound(len(data))})')
  return None


def save_finding(directory: str, kind: str, data: bytes) -> str:
  """Writes `data` as `<directory>/<kind>-<sha256 prefix>.bytes` atomically; returns the path.

  `kind`: a Finding's, libFuzzer's artifact kind (crash, timeout, oom) or 'coverage'.
  """
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f'{kind}-{hashlib.sha256(data).hexdigest()[:16]}.bytes')
  fd, temp = tempfile.mkstemp(dir=directory, prefix='.finding-')
  try:
    with os.fdopen(fd, 'wb') as file:
      file.write(data)
    os.replace(temp, path)
  except BaseException:
    os.remove(temp)
    raise
  return path


def _mutate_zip_record(data: bytes, max_size: int, rng: random.Random, mutate) -> Optional[bytes]:
  """`data` re-zipped with one record mutated (data.pkl most often); None if it is no zip."""
  try:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
      records = [(info.filename, archive.read(info)) for info in archive.infolist()]
  except Exception:  # pylint: disable=broad-except
    return None
  if not records:
    return None
  pickles = [i for i, (name, _) in enumerate(records) if name.endswith('data.pkl')]
  index = rng.choice(pickles) if pickles and rng.random() < 0.6 else rng.randrange(len(records))
  name, record = records[index]
  records[index] = (name, mutate(record, 2 * len(record) + 64))
  out = io.BytesIO()
  with zipfile.ZipFile(out, 'w') as archive:
    for name, record in records:
      archive.writestr(name, record)
  result = out.getvalue()
  return result if len(result) <= max_size else None


def _fuzz_child(launcher: str, findings_dir: str, per_input_seconds: float,
                libfuzzer_args: List[str]) -> None:
  """Runs libFuzzer in this process on the reader, instrumented with its pickle and zipfile.

  `launcher` is what libFuzzer runs to start another such process (for -merge).
  """
  import atheris  # pylint: disable=import-outside-toplevel

  global checkpoint  # pylint: disable=global-statement
  # Re-imported under instrumentation (numpy had imported pickle already).
  instrumented = ('pickle', 'zipfile', 'video_swin_hub.hub_models.checkpoint')
  for name in instrumented:
    sys.modules.pop(name, None)
  with atheris.instrument_imports(include=list(instrumented)):
    checkpoint = importlib.import_module('video_swin_hub.hub_models.checkpoint')
  scratch = tempfile.NamedTemporaryFile(prefix='fuzz-checkpoint-', suffix='.pth', delete=False)
  scratch.close()
  reported = set()

  def test_one_input(data: bytes) -> None:
    finding = check_input(data, scratch.name, per_input_seconds, checkpoint.load)
    if finding is None:
      return
    # One file per kind and message shape, not one per mutation of the same bug.
    signature = (finding.kind, re.sub(r'\d+', 'N', finding.detail)[:80])
    path = save_finding(findings_dir, finding.kind, data) if signature not in reported else '-'
    reported.add(signature)
    print(f'FINDING\t{finding.kind}\t{path}\t{finding.detail}', file=sys.stderr, flush=True)

  def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if data[:4] == b'PK\x03\x04' and rng.random() < 0.5:
      mutated = _mutate_zip_record(data, max_size, rng, atheris.Mutate)
      if mutated is not None:
        return mutated
    return atheris.Mutate(data, max_size)

  tracemalloc.start()
  try:
    atheris.Setup([launcher, *libfuzzer_args], test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()
  finally:
    os.remove(scratch.name)


# libFuzzer status line: "#4096  pulse  cov: 1234 ft: 2345 corp: 67/89Kb ...".
_STATUS = re.compile(r'^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)')
_EXECUTED = re.compile(r'^stat::number_of_executed_units: (\d+)')


@dataclasses.dataclass
class Report:
  seconds: float = 0.0
  executions: int = 0
  runs: int = 0
  coverage_at_start: Optional[Dict[str, int]] = None
  coverage_at_end: Optional[Dict[str, int]] = None
  corpus_files: int = 0
  findings: List[str] = dataclasses.field(default_factory=list)


def _run_child(args: List[str], report: Report) -> int:
  """Runs one fuzzing child, folding its status lines into `report`; returns its exit code."""
  child = subprocess.Popen(args, cwd=_REPO_ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, errors='replace')
  executed = 0
  for line in child.stderr:
    status = _STATUS.match(line)
    if status:
      executed = int(status.group(1))
      coverage = {'cov': int(status.group(3)), 'ft': int(status.group(4)),
                  'corpus': int(status.group(5))}
      if report.coverage_at_start is None and status.group(2) == 'INITED':
        report.coverage_at_start = coverage
      report.coverage_at_end = coverage
    elif _EXECUTED.match(line):
      executed = int(_EXECUTED.match(line).group(1))
    elif line.startswith('FINDING\t'):
      report.findings.append(line.rstrip('\n'))
      print(line, end='', file=sys.stderr, flush=True)
  report.executions += executed
  report.runs += 1
  return child.wait()


def fuzz(max_time: float, work_dir: str, findings_dir: str, per_input_seconds: float,
         max_len: int, rss_limit_mb: int, seed_dir: Optional[str] = None,
         merge_into: Optional[str] = None) -> Report:
  """Fuzzes `load` for `max_time` seconds; see the module docstring.

  With `merge_into`, afterwards adds to that folder the fewest working-corpus inputs that reach
  coverage it lacks (libFuzzer -merge=1).
  """
  corpus = os.path.join(work_dir, 'corpus')
  artifacts = os.path.join(work_dir, 'artifacts')
  for directory in (corpus, artifacts):
    os.makedirs(directory, exist_ok=True)
  if seed_dir is None:
    from tools import checkpoint_seeds  # pylint: disable=import-outside-toplevel
    seed_dir = os.path.join(work_dir, 'seeds')
    checkpoint_seeds.write_seeds(seed_dir)
  report = Report()
  start = time.monotonic()
  # libFuzzer starts further processes (for -merge) as argv[0]: an executable that runs the child.
  launcher = os.path.join(work_dir, 'fuzz_child.sh')
  with open(launcher, 'w') as file:
    file.write(f'#!/bin/sh\ncd {shlex.quote(_REPO_ROOT)} && exec {shlex.quote(sys.executable)} '
               f'-m tools.fuzz_checkpoint --child --launcher={shlex.quote(launcher)} '
               f'--findings_dir={shlex.quote(findings_dir)} '
               f'--per_input_seconds={per_input_seconds} -- "$@"\n')
  os.chmod(launcher, 0o755)
  child = [launcher, f'-max_len={max_len}', f'-timeout={max(10, int(4 * per_input_seconds))}',
           f'-rss_limit_mb={rss_limit_mb}', f'-artifact_prefix={artifacts}/']
  while (remaining := int(max_time - (time.monotonic() - start))) >= 1:
    code = _run_child([*child, f'-max_total_time={remaining}', '-print_final_stats=1', corpus,
                       seed_dir], report)
    # libFuzzer's own kills (timeout, out of memory, a crash) leave the input as an artifact.
    for name in sorted(os.listdir(artifacts)):
      with open(os.path.join(artifacts, name), 'rb') as file:
        data = file.read()
      kind = name.split('-', 1)[0]
      report.findings.append(f'FINDING\t{kind}\t{save_finding(findings_dir, kind, data)}\t'
                             f'libFuzzer exit code {code}')
      os.remove(os.path.join(artifacts, name))
    if code == 0:
      break
  report.seconds = round(time.monotonic() - start, 1)
  report.corpus_files = len(os.listdir(corpus))
  if merge_into:
    _merge(child, corpus, merge_into, os.path.join(work_dir, 'merge'))
  return report


def _merge(child: List[str], corpus: str, target: str, scratch: str) -> None:
  """Adds to `target`, as `coverage-<sha256 prefix>.bytes`, the fewest `corpus` inputs that reach
  coverage its files lack."""
  shutil.rmtree(scratch, ignore_errors=True)
  os.makedirs(scratch)
  os.makedirs(target, exist_ok=True)
  for name in os.listdir(target):
    shutil.copy(os.path.join(target, name), scratch)
  before = set(os.listdir(scratch))
  subprocess.run([*child, '-merge=1', scratch, corpus], cwd=_REPO_ROOT, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  for name in sorted(set(os.listdir(scratch)) - before):
    with open(os.path.join(scratch, name), 'rb') as file:
      save_finding(target, 'coverage', file.read())
  shutil.rmtree(scratch)


_MAX_TIME = flags.DEFINE_float('max_time', 60, 'Seconds to fuzz for, in total.')
_WORK_DIR = flags.DEFINE_string('work_dir', os.path.join(tempfile.gettempdir(), 'fuzz_checkpoint'),
                                'Folder for the working corpus, seeds and libFuzzer artifacts.')
_FINDINGS_DIR = flags.DEFINE_string('findings_dir', DEFAULT_FINDINGS_DIR,
                                    'Folder every finding is saved into.')
_SEED_DIR = flags.DEFINE_string('seed_dir', None,
                                'Folder of seed files (default: written by checkpoint_seeds).')
_PER_INPUT_SECONDS = flags.DEFINE_float('per_input_seconds', 2.0,
                                        'Longest a single load may take.')
_MAX_LEN = flags.DEFINE_integer('max_len', 16384, 'Largest input libFuzzer generates, in bytes.')
_RSS_LIMIT_MB = flags.DEFINE_integer('rss_limit_mb', 2048,
                                     'libFuzzer kills the fuzzing process above this RSS.')
_REPORT = flags.DEFINE_string('report', None, 'Also write the report as JSON here.')
_MERGE_INTO = flags.DEFINE_string('merge_into', None, 'After fuzzing, add the working-corpus '
                                  'inputs that reach new coverage to this folder (e.g. '
                                  'tests/data/checkpoint_corpus).')
_CHILD = flags.DEFINE_bool('child', False, 'Internal: be the fuzzing process (libFuzzer '
                           'arguments follow --).')
_LAUNCHER = flags.DEFINE_string('launcher', None, 'Internal: the script that starts a child.')


def main(argv):
  if _CHILD.value:
    _fuzz_child(_LAUNCHER.value, _FINDINGS_DIR.value, _PER_INPUT_SECONDS.value, argv[1:])
    return
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  report = fuzz(_MAX_TIME.value, _WORK_DIR.value, _FINDINGS_DIR.value, _PER_INPUT_SECONDS.value,
                _MAX_LEN.value, _RSS_LIMIT_MB.value, _SEED_DIR.value, _MERGE_INTO.value)
  summary = json.dumps(dataclasses.asdict(report), indent=1)
  print(summary)
  if _REPORT.value:
    with open(_REPORT.value, 'w') as file:
      file.write(summary + '\n')


if __name__ == '__main__':
  app.run(main)
