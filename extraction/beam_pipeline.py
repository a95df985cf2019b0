r"""The feature extraction of `extract_features` as an Apache Beam pipeline.

  python -m extraction.beam_pipeline --model=HANDLE --videos=GLOB_OR_LIST --output=DIR \
      [--protocol=kinetics|ssv2] [--num_clips=N] [--frame_interval=2] [--num_crops=1|3] \
      [--short_side=S] [--min_frames=1] [--video_root=DIR] [--batch_size=12] \
      [--shard_size=100] [Beam pipeline options]

Flags this tool does not know are Beam pipeline options, e.g. `--runner=DataflowRunner
--project=P --region=R --temp_location=gs://B/tmp` (the workers also need this repository's
packages: `--setup_file` or a custom container) or, locally, `--direct_num_workers=4
--direct_running_mode=multi_processing`. Without `--runner` the pipeline runs in this process on
FnApiRunner, the local runner that DirectRunner itself falls back to: Beam 2.77's DirectRunner
first tries to download the Prism runner binary from GitHub, which an offline or hermetic run must
not depend on (`--runner=DirectRunner` still does that).

The launcher lists the videos, loads the model once to read its input size and checks the output
folder exactly as `extract_features` does (`extraction.job`), then runs

  Create(videos not yet extracted) | Reshuffle | BatchElements (a few videos)
    | ParDo(ExtractFn) -> serialized Examples -> WriteToTFRecord(features-<run>-beam-SSSSS-of-NNNNN)
                       -> error lines (tagged) -> WriteToText(errors.tsv)

and writes the manifest, so the folder has the layout of `extraction.records`: `read_features`
reads it, and either tool resumes it. ExtractFn runs the same `extractor.extract` (decoding,
sampling, preprocessing, batching, view averaging) over each batch of videos.

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
import math
import sys
from typing import Callable, Iterator, List, Sequence

from absl import app
from absl import flags
import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.utils import shared
import tensorflow as tf

from extraction import cli
from extraction import extractor
from extraction import inputs
from extraction import job as job_lib
from extraction import model as model_lib
from extraction import records
from extraction import sampling as sampling_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

RUNNER = "extraction.beam_pipeline"
DEFAULT_BEAM_RUNNER = "FnApiRunner"
ERRORS_TAG = "errors"


class ExtractFn(beam.DoFn):
  """A batch of VideoRefs -> a serialized Example per extracted video, and an errors.tsv line
  (tagged ERRORS_TAG) per failed one."""

  def __init__(self, handle: str, sampling: sampling_lib.Sampling, min_frames: int,
               batch_size: int, shared_model: shared.Shared):
    super().__init__()
    self._handle = handle
    self._sampling = sampling
    self._min_frames = min_frames
    self._batch_size = batch_size
    self._shared_model = shared_model
    self._model = None

  def setup(self):
    self._model = self._shared_model.acquire(lambda: model_lib.FeatureModel(self._handle))

  def process(self, videos: List[inputs.VideoRef]) -> Iterator:
    # Beam runs several bundles at once per worker: one decoding thread per bundle is enough.
    for result in extractor.extract(videos, self._model, self._sampling,
                                    min_frames=self._min_frames, batch_size=self._batch_size,
                                    decode_workers=1):
      video = result.video
      if result.error is None:
        yield records.make_example(video.video_id, video.path, result.features, result.num_views)
      else:
        yield beam.pvalue.TaggedOutput(ERRORS_TAG, records.error_line(video.path, result.error))


def build(pipeline: beam.Pipeline, job: job_lib.Job, *, batch_size: int, shard_size: int) -> None:
  """Adds the extraction of `job.todo` (not empty) to `pipeline`."""
  todo = job.todo
  videos_per_batch = max(1, math.ceil(batch_size / job.sampling.num_views))
  results = (
      pipeline
      | "ListVideos" >> beam.Create(todo)
      | "Spread" >> beam.Reshuffle()
      | "BatchVideos" >> beam.BatchElements(min_batch_size=1, max_batch_size=videos_per_batch)
      | "Extract" >> beam.ParDo(ExtractFn(job.model.handle, job.sampling, job.min_frames,
                                          batch_size, shared.Shared())).with_outputs(
                                              ERRORS_TAG, main="features"))
  _ = results.features | "WriteShards" >> beam.io.WriteToTFRecord(
      os.path.join(job.output, f"{records.run_prefix()}-beam"),
      file_name_suffix=records.SHARD_SUFFIX, num_shards=math.ceil(len(todo) / shard_size))
  errors_name, errors_suffix = os.path.splitext(records.ERRORS)
  _ = results[ERRORS_TAG] | "WriteErrors" >> beam.io.WriteToText(
      os.path.join(job.output, errors_name), file_name_suffix=errors_suffix,
      shard_name_template="", header=records.ERRORS_HEADER)


def run(job: job_lib.Job, beam_args: Sequence[str], *, batch_size: int = 12,
        shard_size: int = 100, progress: Callable[[str], None] = print) -> None:
  """Runs the pipeline for the job's videos not yet extracted and waits for it; then writes the
  manifest with counts read back from the folder.

  Args:
    job: from `job.make_job`.
    beam_args: Beam pipeline options, e.g. ["--runner=DataflowRunner", ...].
    batch_size: views per model call.
    shard_size: videos per TFRecord shard (the shard count is fixed up front).
    progress: called with each progress line.
  """
  todo = job.todo
  tf.io.gfile.makedirs(job.output)
  records.write_manifest(job.output, job.manifest(done=len(job.done), failed=0, complete=False,
                                                  runner=RUNNER))
  progress(f"{len(job.videos)} videos listed, {len(job.done)} already extracted, "
           f"{len(todo)} to extract")
  if todo:
    options = pipeline_options.PipelineOptions(list(beam_args))
    standard = options.view_as(pipeline_options.StandardOptions)
    standard.runner = standard.runner or DEFAULT_BEAM_RUNNER
    with beam.Pipeline(options=options) as pipeline:
      build(pipeline, job, batch_size=batch_size, shard_size=shard_size)
  else:
    records.ErrorLog(job.output).close()  # Nothing to extract, so no failures: only the header.
  done = len(records.done_ids(job.output) & {v.video_id for v in job.videos})
  failed = len(records.read_errors(job.output))
  records.write_manifest(job.output, job.manifest(done=done, failed=failed, complete=True,
                                                  runner=RUNNER))
  progress(f"extracted {done - len(job.done)}, failed {failed}, skipped {len(job.done)}; "
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
  except job_lib.USER_ERRORS as error:
    sys.exit(f"error: {error}")
  run(job, argv[1:], batch_size=cli.BATCH_SIZE.value, shard_size=cli.SHARD_SIZE.value,
      progress=lambda line: print(line, flush=True))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
