r"""The feature extraction of `extract_features` as an Apache Beam pipeline.

  python -m video_swin_hub.extraction.beam_pipeline --model=HANDLE --videos=GLOB_OR_LIST \
      --output=DIR [--protocol=kinetics|ssv2] [--num_clips=N] [--frame_interval=2] \
      [--num_crops=1|3] [--short_side=S] [--min_frames=1] [--video_root=DIR] [--batch_size=12] \
      [--shard_size=100] [--clip_size=T,H,W] [--decode_memory_mb=4096] [--decode_timeout=600] \
      [Beam pipeline options]

(`video-swin-beam-pipeline` is the same, installed as a console script; from a checkout without
the package installed, `python -m extraction.beam_pipeline` runs it on in-process runners.)

Flags this tool does not know are Beam pipeline options. Without `--runner` the pipeline runs in
this process on FnApiRunner, the local runner that DirectRunner itself falls back to: Beam 2.77's
DirectRunner first tries to download the Prism runner binary from GitHub, which an offline or
hermetic run must not depend on (`--runner=DirectRunner` still does that); locally
`--direct_num_workers=4 --direct_running_mode=multi_processing` spreads it over processes.

Remote runners (Dataflow, Flink, Spark, any portable runner) run the DoFns in separate SDK worker
processes, which unpickle them by module name: they must import this package under the name the
launcher used. So launch it as `python -m video_swin_hub.extraction.beam_pipeline` (or the console
script) with the project installed, and ship the same wheel to the workers, e.g. on Dataflow:

  pip wheel --no-deps -w dist .        # dist/video_swin_hub-<version>-py3-none-any.whl
  pip install 'dist/video_swin_hub-<version>-py3-none-any.whl[dataflow]'
  video-swin-beam-pipeline --model=gs://B/models/swin_tiny/1 --videos='gs://B/videos/*/*.mp4' \
      --output=gs://B/features --runner=DataflowRunner --project=P --region=R \
      --temp_location=gs://B/tmp --extra_package=dist/video_swin_hub-<version>-py3-none-any.whl \
      --requirements_file=requirements.txt

(`--extra_package` installs the wheel on every worker; `--requirements_file` installs the pinned
runtime requirements there; a custom worker image with the wheel installed, passed as
`--sdk_container_image`, avoids both installs at worker start.)

The launcher takes the output folder's lock (one run per folder, see `output_lock`), removes what
killed runs left (hidden temporaries, `beam-temp-*` folders), lists the videos, loads the model
once to read its input size and checks the output folder exactly as `extract_features` does
(`extraction.job`), then runs

  Create(videos not yet extracted) | Reshuffle | BatchElements (a few videos)
    | ParDo(ExtractFn) -> serialized Examples -> WriteToTFRecord(features-<run>-beam-SSSSS-of-NNNNN)
                       -> error lines (tagged) -> WriteToText(.tmp-errors-<run>.tsv)

appends the run's error lines to errors.tsv and writes the manifest, so the folder has the layout
of `extraction.records`: `read_features` reads it, and either tool resumes it. ExtractFn runs the
same `extractor.extract` (decoding in a worker process, sampling, preprocessing, batching, view
averaging) over each batch of videos.

Model once per worker: ExtractFn.setup() gets the model through `apache_beam.utils.shared.Shared`,
so every DoFn instance (thread) of a worker process shares one loaded SavedModel instead of one
copy per thread. RunInference is not used: its unit is one model input, while here a video's
views must be decoded together and averaged back into one feature; batching whole videos and
reusing `extractor.extract` keeps one implementation for both tools and never ships decoded
views (hundreds of MB per video) between workers.
"""

import os

# As the other tools: tensorflow_hub is built for tf_keras; select it before TensorFlow loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import logging
import math
import sys
from typing import Callable, Iterator, List, Sequence

from absl import app
from absl import flags
import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.utils import shared
import tensorflow as tf

from . import cli
from . import decode_worker
from . import extractor
from . import inputs
from . import job as job_lib
from . import model as model_lib
from . import output_lock
from . import records
# pylint: enable=g-import-not-at-top,wrong-import-position

RUNNER = "extraction.beam_pipeline"
DEFAULT_BEAM_RUNNER = "FnApiRunner"
ERRORS_TAG = "errors"


class ExtractFn(beam.DoFn):
  """A batch of VideoRefs -> a serialized Example per extracted video, and an errors.tsv line
  (tagged ERRORS_TAG) per failed one."""

  def __init__(self, job: job_lib.Job, run_id: str, batch_size: int, decode_memory_mb: int,
               decode_timeout: float, shared_model: shared.Shared):
    super().__init__()
    self._handle = job.model.handle
    self._clip_size = job.model.input_size if job.model.signature != model_lib.SIGNATURE else None
    self._sampling = job.sampling
    self._min_frames = job.min_frames
    self._run_id = run_id
    self._batch_size = batch_size
    self._decode_memory_mb = decode_memory_mb
    self._decode_timeout = decode_timeout
    self._shared_model = shared_model
    self._model = None
    self._decoder = None

  def setup(self):
    # Where the worker imported this package from: the first thing to check when workers run
    # other code than the launcher (an old wheel, a missing --extra_package).
    logging.info("ExtractFn set up from %s", __file__)
    self._model = self._shared_model.acquire(
        lambda: model_lib.FeatureModel(self._handle, self._clip_size))
    # Beam runs several bundles at once per worker: one decoding process per DoFn instance.
    self._decoder = decode_worker.WorkerPool(1, self._decode_memory_mb, self._decode_timeout)

  def process(self, videos: List[inputs.VideoRef]) -> Iterator:
    for result in extractor.extract(videos, self._model, self._sampling,
                                    min_frames=self._min_frames, batch_size=self._batch_size,
                                    decode_workers=1, frame_source=self._decoder):
      video = result.video
      if result.error is None:
        yield records.make_example(video.video_id, video.path, result.features, result.num_views)
      else:
        yield beam.pvalue.TaggedOutput(
            ERRORS_TAG, records.error_line(video.path, result.error, self._run_id))

  def teardown(self):
    if self._decoder is not None:
      self._decoder.close()


def run_errors_path(output_dir: str, run_id: str) -> str:
  """Where the pipeline writes its error lines before the launcher appends them to errors.tsv
  (a hidden temporary: a killed run's copy is removed by the next run)."""
  return os.path.join(output_dir, f"{records.TEMP_PREFIX}errors-{run_id}.tsv")


def build(pipeline: beam.Pipeline, job: job_lib.Job, run_id: str, *, batch_size: int,
          shard_size: int, decode_memory_mb: int = 4096, decode_timeout: float = 600.0) -> None:
  """Adds the extraction of `job.todo` (not empty) to `pipeline`."""
  todo = job.todo
  videos_per_batch = max(1, math.ceil(batch_size / job.sampling.num_views))
  results = (
      pipeline
      | "ListVideos" >> beam.Create(todo)
      | "Spread" >> beam.Reshuffle()
      | "BatchVideos" >> beam.BatchElements(min_batch_size=1, max_batch_size=videos_per_batch)
      | "Extract" >> beam.ParDo(ExtractFn(job, run_id, batch_size, decode_memory_mb,
                                          decode_timeout, shared.Shared())).with_outputs(
                                              ERRORS_TAG, main="features"))
  _ = results.features | "WriteShards" >> beam.io.WriteToTFRecord(
      os.path.join(job.output, f"{records.shard_prefix(run_id)}-beam"),
      file_name_suffix=records.SHARD_SUFFIX, num_shards=math.ceil(len(todo) / shard_size))
  _ = results[ERRORS_TAG] | "WriteErrors" >> beam.io.WriteToText(
      run_errors_path(job.output, run_id), shard_name_template="")


def run(job: job_lib.Job, beam_args: Sequence[str], *, batch_size: int = 12,
        shard_size: int = 100, decode_memory_mb: int = 4096, decode_timeout: float = 600.0,
        progress: Callable[[str], None] = print) -> None:
  """Runs the pipeline for the job's videos not yet extracted and waits for it, holding the
  output folder's lock; then appends the run's errors and writes the manifest with counts read
  back from the folder.

  Args:
    job: from `job.make_job`.
    beam_args: Beam pipeline options, e.g. ["--runner=DataflowRunner", ...].
    batch_size: views per model call.
    shard_size: videos per TFRecord shard (the shard count is fixed up front).
    decode_memory_mb: memory limit of each decoding process.
    decode_timeout: seconds one video may take to decode.
    progress: called with each progress line.

  Raises:
    records.OutputError: the folder is in use, corrupt, unreadable or cannot be written.
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
    failed = 0
    if todo:
      options = pipeline_options.PipelineOptions(list(beam_args))
      standard = options.view_as(pipeline_options.StandardOptions)
      standard.runner = standard.runner or DEFAULT_BEAM_RUNNER
      with beam.Pipeline(options=options) as pipeline:
        build(pipeline, job, run_id, batch_size=batch_size, shard_size=shard_size,
              decode_memory_mb=decode_memory_mb, decode_timeout=decode_timeout)
      errors_path = run_errors_path(job.output, run_id)
      with records.output_errors(errors_path, "read"):
        with tf.io.gfile.GFile(errors_path) as f:
          lines = f.read().splitlines()
      with records.ErrorLog(job.output, run_id) as errors:
        errors.add_lines(lines)
      failed = len(lines)
      with records.output_errors(errors_path, "remove"):
        tf.io.gfile.remove(errors_path)
    stored = records.stored_videos(job.output)
    records.drop_errors_of(job.output, {stored[v.video_id] for v in todo if v.video_id in stored})
    done = set(stored) & {v.video_id for v in job.videos}
    records.write_manifest(job.output, job.manifest(
        done=len(done), failed=job_lib.failed_count(job, done), complete=True, runner=RUNNER))
  progress(f"extracted {len(done) - len(job.done)}, failed {failed}, skipped {len(job.done)}; "
           f"output in {job.output}")


def _parse_flags(argv: List[str]) -> List[str]:
  """Parses this tool's flags; what remains of argv (after the program name) is for Beam."""
  try:
    return flags.FLAGS(argv, known_only=True)
  except flags.Error as error:
    sys.exit(f"error: {error}")


def main(argv):
  try:
    job = cli.job_from_flags()
    run(job, argv[1:], batch_size=cli.BATCH_SIZE.value, shard_size=cli.SHARD_SIZE.value,
        decode_memory_mb=cli.DECODE_MEMORY_MB.value, decode_timeout=cli.DECODE_TIMEOUT.value,
        progress=lambda line: print(line, flush=True))
  except job_lib.USER_ERRORS as error:
    sys.exit(f"error: {error}")


def cli_main():
  """The `video-swin-beam-pipeline` console script."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli_main()
