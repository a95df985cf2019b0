"""Decoding in worker processes: a crash inside FFmpeg or PyAV, a runaway allocation or a hang on
one file becomes that file's `video.VideoError`, and the run goes on.

Each worker is `python -m <this package>.decode_worker MEMORY_LIMIT_MB`, started with the
launching interpreter and its import path, so it imports this package under the same name as its
parent. It imports PyAV and NumPy only (not TensorFlow), serves one request at a time over its
stdin/stdout pipes (length-prefixed pickles: the request `(path, sampling, min_frames)`, the
answer `video.SampledFrames` or an error reason) and limits its own data segment (RLIMIT_DATA)
to MEMORY_LIMIT_MB, so a file that needs more fails alone instead of exhausting the machine.

Parent side: `WorkerPool(size)` is shared by the decoding threads; each `sample` call takes a
free worker. A worker that dies (a signal, an exit) or exceeds the time limit is replaced.
"""

import errno
import os
import pickle
import queue
import resource
import select
import signal
import struct
import subprocess
import sys
import time
from typing import List, Optional

from . import sampling as sampling_lib
from . import video as video_lib

_HEADER = struct.Struct("<Q")
# Seconds a new process may take to import its modules (on a loaded machine), apart from the time
# limit per video.
STARTUP_TIMEOUT_S = 120.0
_OK, _ERROR = "ok", "error"


def _write_message(stream, message) -> None:
  data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
  stream.write(_HEADER.pack(len(data)) + data)
  stream.flush()


def _read_exactly(fd: int, size: int, deadline: Optional[float]) -> Optional[bytes]:
  """`size` bytes from `fd`; None on end of file; TimeoutError past `deadline` (monotonic)."""
  chunks, remaining = [], size
  while remaining:
    if deadline is not None:
      wait = deadline - time.monotonic()
      if wait <= 0 or not select.select([fd], [], [], wait)[0]:
        raise TimeoutError
    chunk = os.read(fd, min(remaining, 1 << 20))
    if not chunk:
      return None
    chunks.append(chunk)
    remaining -= len(chunk)
  return b"".join(chunks)


def _read_message(fd: int, deadline: Optional[float] = None):
  """The next message on `fd`, or None on end of file."""
  header = _read_exactly(fd, _HEADER.size, deadline)
  if header is None:
    return None
  data = _read_exactly(fd, _HEADER.unpack(header)[0], deadline)
  return None if data is None else pickle.loads(data)


def _over_the_limit(limit_mb: int) -> str:
  return f"needs more than the decoding memory limit of {limit_mb} MiB"


def _answer(path: str, sampling: sampling_lib.Sampling, min_frames: int, limit_mb: int):
  try:
    frames = video_lib.sample(
        path, lambda n: sampling_lib.frame_indices(sampling, n), min_frames)
    return _OK, frames
  except video_lib.VideoError as error:
    # FFmpeg reports a failed allocation as ENOMEM: under the limit, that is the limit's doing.
    if getattr(error.__cause__, "errno", None) == errno.ENOMEM:
      return _ERROR, _over_the_limit(limit_mb)
    return _ERROR, error.reason
  except MemoryError:
    return _ERROR, _over_the_limit(limit_mb)


def serve(limit_mb: int) -> None:
  """The worker's loop: answers requests on stdin until it closes."""
  resource.setrlimit(resource.RLIMIT_DATA, (limit_mb << 20, limit_mb << 20))
  # Answers go to a private copy of stdout; anything a library prints goes to stderr instead.
  answers = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)
  _write_message(answers, (_OK, None))  # Ready: imports done.
  requests = sys.stdin.fileno()
  while (request := _read_message(requests)) is not None:
    answer = _answer(*request, limit_mb)
    try:
      _write_message(answers, answer)
    except MemoryError:
      _write_message(answers, (_ERROR, _over_the_limit(limit_mb)))


def _describe_exit(returncode: int) -> str:
  if returncode < 0:
    try:
      return f"decoder crashed ({signal.Signals(-returncode).name})"
    except ValueError:
      return f"decoder crashed (signal {-returncode})"
  return f"decoder exited with status {returncode}"


class DecodeWorker:
  """One worker process (started on first use, restarted after it dies). Not thread-safe."""

  def __init__(self, memory_limit_mb: int, timeout_s: float):
    self._memory_limit_mb = memory_limit_mb
    self._timeout_s = timeout_s
    self._process: Optional[subprocess.Popen] = None
    self._ready = False

  @property
  def pid(self) -> Optional[int]:
    return self._process.pid if self._process else None

  def start(self) -> None:
    """Starts the process unless it runs."""
    if self._process is not None:
      return
    env = dict(os.environ)
    # The parent's import path, so that the worker finds this package where the parent did.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    self._process = subprocess.Popen(
        [sys.executable, "-m", f"{__package__}.decode_worker", str(self._memory_limit_mb)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    self._ready = False

  def wait_ready(self) -> bool:
    """Starts the process if needed and waits (up to STARTUP_TIMEOUT_S) for its ready message;
    False when it died or did not answer (it is then stopped)."""
    self.start()
    if not self._ready:
      try:
        self._ready = _read_message(self._process.stdout.fileno(),
                                    time.monotonic() + STARTUP_TIMEOUT_S) is not None
      except TimeoutError:
        pass
      if not self._ready:
        self.close(kill=True)
    return self._ready

  def sample(self, path: str, sampling: sampling_lib.Sampling,
             min_frames: int) -> video_lib.SampledFrames:
    """`video.sample` of `path` with `sampling`'s frame indices, run in the worker.

    Raises:
      video.VideoError: what `video.sample` raises, and a crash, exit, memory-limit or time-limit
        failure of the worker on this file.
    """
    if not self.wait_ready():
      raise video_lib.VideoError(path, "the decoding process did not start")
    process = self._process
    try:
      _write_message(process.stdin, (path, sampling, min_frames))
      answer = _read_message(process.stdout.fileno(), time.monotonic() + self._timeout_s)
    except TimeoutError:
      self.close(kill=True)
      raise video_lib.VideoError(
          path, f"decoding took longer than the limit of {self._timeout_s:g} s") from None
    except BrokenPipeError:
      answer = None
    if answer is None:
      self._process = None
      process.stdin.close()
      process.stdout.close()
      raise video_lib.VideoError(path, _describe_exit(process.wait()))
    status, value = answer
    if status == _ERROR:
      raise video_lib.VideoError(path, value)
    return value

  def close(self, kill: bool = False) -> None:
    """Stops the process: it exits when its stdin closes; with `kill`, or when it does not exit
    within 5 s (busy), it is killed."""
    process, self._process = self._process, None
    if process is None:
      return
    if kill:
      process.kill()
    process.stdin.close()
    try:
      process.wait(timeout=5)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
    process.stdout.close()


class WorkerPool:
  """`size` DecodeWorkers shared by threads: `sample` runs on a free one. A context manager.

  The processes start at once (in parallel, about 0.15 s each), so they are ready when the first
  videos come."""

  def __init__(self, size: int, memory_limit_mb: int = 4096, timeout_s: float = 600.0):
    self._workers = [DecodeWorker(memory_limit_mb, timeout_s) for _ in range(size)]
    self._free: "queue.Queue[DecodeWorker]" = queue.Queue()
    for worker in self._workers:
      worker.start()
      self._free.put(worker)

  def wait_ready(self) -> None:
    """Waits until every worker has started (or failed to), e.g. before timing a run."""
    for worker in self._workers:
      worker.wait_ready()

  def pids(self) -> List[int]:
    """The process ids of the running workers."""
    return [w.pid for w in self._workers if w.pid is not None]

  def sample(self, path: str, sampling: sampling_lib.Sampling,
             min_frames: int) -> video_lib.SampledFrames:
    """`DecodeWorker.sample` on a free worker (waits for one)."""
    worker = self._free.get()
    try:
      return worker.sample(path, sampling, min_frames)
    finally:
      self._free.put(worker)

  def close(self) -> None:
    for worker in self._workers:
      worker.close()

  def __enter__(self) -> "WorkerPool":
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.close()


if __name__ == "__main__":
  serve(int(sys.argv[1]))
