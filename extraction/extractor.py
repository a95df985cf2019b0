"""Videos -> per-video pooled features: decoding ahead of the model, batched inference, view
averaging.

Both tools run `extract`: the single-machine CLI over all its videos, the Beam pipeline over each
batch of videos a worker receives. Decoding happens in worker processes (`decode_worker`), so a
file that crashes or exhausts the decoder becomes that video's error, never the run's end.
"""

import collections
import dataclasses
import itertools
import threading
import time
from concurrent import futures
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Protocol

import numpy as np

from . import decode_worker
from . import inputs
from . import preprocess
from . import sampling as sampling_lib
from . import video as video_lib

# `[B, 3, T, H, W]` float32 -> `[B, D]` float32, e.g. a model.FeatureModel.
Model = Callable[[np.ndarray], np.ndarray]


class FrameSource(Protocol):
  """Where sampled frames come from, e.g. a decode_worker.WorkerPool; called from several
  threads at once."""

  def sample(self, path: str, sampling: sampling_lib.Sampling,
             min_frames: int) -> video_lib.SampledFrames:
    """The frames of `path` that `sampling` needs; raises video.VideoError."""


@dataclasses.dataclass(frozen=True)
class Result:
  """One video's outcome.

  Attributes:
    video: which video.
    features: `[D]` float32, the model's features averaged over the views; None if it failed.
    num_views: views averaged (0 if it failed).
    error: why it failed (one line, without the path); None if it did not.
  """
  video: inputs.VideoRef
  features: Optional[np.ndarray]
  num_views: int
  error: Optional[str]


@dataclasses.dataclass
class Timings:
  """Seconds spent per stage, and views run; decode and preprocess are summed over threads."""
  decode: float = 0.0
  preprocess: float = 0.0
  model: float = 0.0
  views: int = 0
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

  def add(self, name: str, amount: float) -> None:
    """Adds `amount` to the field `name` (a stage's seconds, or views); safe from any thread."""
    with self._lock:
      setattr(self, name, getattr(self, name) + amount)


def prepare(path: str, sampling: sampling_lib.Sampling, min_frames: int, source: FrameSource,
            timings: Timings) -> np.ndarray:
  """Decodes and preprocesses one video: `[num_views, 3, T, H, W]` float32 in [0, 1].

  Raises:
    video.VideoError: undecodable, fewer than `min_frames` (at least 1) decodable frames, or the
      decoder failed on it.
  """
  start = time.perf_counter()
  sampled = source.sample(path, sampling, min_frames)
  decoded = time.perf_counter()
  timings.add("decode", decoded - start)
  views = preprocess.clip_views(sampled.frames, sampled.clip_frames, sampling)
  timings.add("preprocess", time.perf_counter() - decoded)
  return views


@dataclasses.dataclass
class _Pending:
  video: inputs.VideoRef
  views: np.ndarray
  next_view: int = 0
  outputs: List[np.ndarray] = dataclasses.field(default_factory=list)


class _Batcher:
  """Runs the model on batches of exactly `batch_size` views (the last may be smaller), filled
  first-in first-out from the queued videos, so one batch may hold views of several videos."""

  def __init__(self, model: Model, batch_size: int, timings: Timings):
    self._model = model
    self._batch_size = batch_size
    self._timings = timings
    self._pending: Deque[_Pending] = collections.deque()
    self._queued_views = 0

  def add(self, video: inputs.VideoRef, views: np.ndarray) -> List[Result]:
    """Queues a video's views; returns the videos whose views have all been run."""
    self._pending.append(_Pending(video, views))
    self._queued_views += len(views)
    done = []
    while self._queued_views >= self._batch_size:
      done += self._run_batch()
    return done

  def flush(self) -> List[Result]:
    done = []
    while self._queued_views:
      done += self._run_batch()
    return done

  def _run_batch(self) -> List[Result]:
    taken, room = [], self._batch_size
    for entry in self._pending:
      count = min(room, len(entry.views) - entry.next_view)
      taken.append((entry, count))
      room -= count
      if not room:
        break
    batch = np.concatenate([e.views[e.next_view:e.next_view + n] for e, n in taken])
    start = time.perf_counter()
    outputs = self._model(batch)
    self._timings.add("model", time.perf_counter() - start)
    self._timings.add("views", len(batch))
    offset = 0
    for entry, count in taken:
      entry.outputs.append(outputs[offset:offset + count])
      entry.next_view += count
      offset += count
    self._queued_views -= len(batch)
    done = []
    while self._pending and self._pending[0].next_view == len(self._pending[0].views):
      entry = self._pending.popleft()
      features = np.concatenate(entry.outputs).mean(axis=0, dtype=np.float64).astype(np.float32)
      done.append(Result(entry.video, features, len(entry.views), None))
    return done


def extract(videos: Iterable[inputs.VideoRef], model: Model, sampling: sampling_lib.Sampling, *,
            min_frames: int = 1, batch_size: int = 12, decode_workers: int = 2,
            frame_source: Optional[FrameSource] = None,
            timings: Optional[Timings] = None) -> Iterator[Result]:
  """Yields one Result per video, as soon as it is known (failures come as they are decoded).

  `decode_workers` threads decode (through `frame_source`) and preprocess up to twice as many
  videos ahead of the model (pipes and TensorFlow release the GIL), so decoding overlaps
  inference.

  Args:
    videos: what to extract.
    model: `[B, 3, T, H, W]` -> `[B, D]`, T, H, W matching `sampling`.
    sampling: the protocol and sizes.
    min_frames: videos with fewer decodable frames fail.
    batch_size: views per model call.
    decode_workers: decoding threads.
    frame_source: decodes the videos; default: a decode_worker.WorkerPool of `decode_workers`
      processes with its default limits, stopped at the end.
    timings: accumulates the time per stage, when given.
  """
  timings = timings if timings is not None else Timings()
  batcher = _Batcher(model, batch_size, timings)
  remaining = iter(videos)
  own_source = frame_source is None
  source = decode_worker.WorkerPool(decode_workers) if own_source else frame_source
  pool = futures.ThreadPoolExecutor(decode_workers)
  ahead = collections.deque()

  def read_ahead(count: int) -> None:
    for video in itertools.islice(remaining, count):
      ahead.append((video, pool.submit(prepare, video.path, sampling, min_frames, source,
                                       timings)))

  try:
    read_ahead(2 * decode_workers)
    while ahead:
      video, future = ahead.popleft()
      read_ahead(1)
      try:
        views = future.result()
      except video_lib.VideoError as error:
        yield Result(video, None, 0, error.reason)
        continue
      yield from batcher.add(video, views)
    yield from batcher.flush()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    if own_source:
      source.close()
