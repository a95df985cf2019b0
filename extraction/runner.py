"""The single-machine extraction run behind `extract_features`: skip what the output folder holds,
extract the rest with `extractor.extract`, write shards, errors and manifest, report progress.

Resuming: running the same job again skips the videos whose features the folder already holds and
retries those that failed. An interrupted run (even by SIGKILL) loses at most the videos of its
unfinished shard; shards are renamed into place complete, so there is never a partial one to
read, and the folder's lock keeps a second run from adding the same videos at the same time.
"""

import contextlib
import dataclasses
import datetime
import time
from typing import Callable, Optional

from . import decode_worker
from . import extractor
from . import job as job_lib
from . import output_lock
from . import records

RUNNER = "extraction.extract_features"  # Named in the manifest.
PROGRESS_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class Summary:
  """What one run did: videos `listed`, `skipped` (already extracted), `extracted` and `failed`
  by this run, its wall `seconds` and the time per stage."""
  listed: int
  skipped: int
  extracted: int
  failed: int
  seconds: float
  timings: extractor.Timings


def _progress_line(finished: int, todo: int, job: job_lib.Job, failed: int, seconds: float,
                   timings: extractor.Timings) -> str:
  videos_per_s = finished / max(seconds, 1e-9)
  eta = datetime.timedelta(seconds=round((todo - finished) / max(videos_per_s, 1e-9)))
  done = len(job.done) + finished
  width = len(str(len(job.videos)))
  return (f"[{done:>{width}}/{len(job.videos)}] {failed} failed, "
          f"{timings.views / max(seconds, 1e-9):.1f} views/s, {videos_per_s:.2f} videos/s, "
          f"ETA {eta}")


def run(job: job_lib.Job, *, batch_size: int = 12, shard_size: int = 100, decode_workers: int = 2,
        decode_memory_mb: int = 4096, decode_timeout: float = 600.0,
        frame_source: Optional[extractor.FrameSource] = None,
        progress: Callable[[str], None] = print) -> Summary:
  """Extracts the job's videos that the output folder does not hold yet, and writes the folder.

  Holds the folder's lock throughout (a second run is refused); removes what killed runs left;
  writes the manifest first with `complete: false` and rewrites it with the counts at the end.

  Args:
    job: from `job.make_job`.
    batch_size: views per model call.
    shard_size: videos per TFRecord shard.
    decode_workers: decoding threads, each with its decoding process.
    decode_memory_mb: memory limit of each decoding process.
    decode_timeout: seconds one video may take to decode.
    frame_source: decodes the videos instead of decoding processes (the benchmark's baseline).
    progress: called with each progress line.

  Raises:
    records.OutputError: the folder is in use, corrupt, unreadable or cannot be written (full
      disk); what it held before is kept.
  """
  with output_lock.OutputLock(job.output):
    records.remove_stale_temporaries(job.output)
    job = job_lib.resume(job)
    todo = job.todo
    run_id = records.run_id()
    records.write_manifest(job.output, job.manifest(
        done=len(job.done), failed=job_lib.failed_count(job, job.done), complete=False,
        runner=RUNNER))
    progress(f"{len(job.videos)} videos listed, {len(job.done)} already extracted, "
             f"{len(todo)} to extract")
    timings = extractor.Timings()
    extracted_paths = set()
    start = last_report = time.monotonic()
    source = frame_source or decode_worker.WorkerPool(decode_workers, decode_memory_mb,
                                                      decode_timeout)
    with (contextlib.closing(source) if frame_source is None else contextlib.nullcontext(),
          records.ShardWriter(job.output, records.shard_prefix(run_id), shard_size) as shards,
          records.ErrorLog(job.output, run_id) as errors):
      results = extractor.extract(todo, job.model, job.sampling, min_frames=job.min_frames,
                                  batch_size=batch_size, decode_workers=decode_workers,
                                  frame_source=source, timings=timings)
      for finished, result in enumerate(results, start=1):
        video = result.video
        if result.error is None:
          shards.add(records.make_example(video.video_id, video.path, result.features,
                                          result.num_views))
          extracted_paths.add(video.path)
        else:
          errors.add(video.path, result.error)
        now = time.monotonic()
        if now - last_report >= PROGRESS_SECONDS or finished == len(todo):
          progress(_progress_line(finished, len(todo), job, errors.count, now - start, timings))
          last_report = now
    summary = Summary(len(job.videos), len(job.done), shards.num_written, errors.count,
                      time.monotonic() - start, timings)
    records.drop_errors_of(job.output, extracted_paths)
    done = job.done | {v.video_id for v in todo if v.path in extracted_paths}
    records.write_manifest(job.output, job.manifest(
        done=len(done), failed=job_lib.failed_count(job, done), complete=True, runner=RUNNER))
  progress(f"extracted {summary.extracted}, failed {summary.failed}, skipped {summary.skipped} "
           f"in {summary.seconds:.1f} s (decode {timings.decode:.1f} s, preprocess "
           f"{timings.preprocess:.1f} s summed over threads; model {timings.model:.1f} s); "
           f"output in {job.output}")
  return summary
