r"""Pooled Video Swin features for a set of video files, on one machine.

  python -m video_swin_hub.extraction.extract_features --model=HANDLE --videos=GLOB_OR_LIST --output=DIR \
      [--protocol=kinetics|ssv2] [--num_clips=N] [--frame_interval=2] [--num_crops=1|3] \
      [--short_side=S] [--min_frames=1] [--video_root=DIR] [--batch_size=12] \
      [--shard_size=100] [--decode_workers=2] [--clip_size=T,H,W] [--decode_memory_mb=4096] \
      [--decode_timeout=600]

Installed from the wheel, the same tool is `video-swin-extract-features` or
`python -m video_swin_hub.extraction.extract_features`.

The defaults are the Kinetics test protocol at the model's input size: 4 clips of T frames at
interval 2, short side = crop size, 3 crops (12 views). Each video's views are run through the
model's `serving_default` signature in batches of `--batch_size` views (views of consecutive videos
share a batch) and the features averaged over the views. See `extraction.records` for the output
folder: TFRecord shards, manifest.json, errors.tsv; and `extraction.runner` for resuming:
re-running the same command skips the videos already extracted and retries those that failed.

One run per output folder: a second run on a folder in use ends with one `error:` line naming the
holder. Decoding runs in `--decode_workers` processes (each limited to `--decode_memory_mb` and
`--decode_timeout` per video), so a file that crashes or exhausts the decoder becomes an
errors.tsv line. `--clip_size=T,H,W` samples clips of that size for a model that has the
any-size `serving_dynamic` signature.

Progress lines give videos done/listed, failures, views/s (one view is one crop of one clip: one
model input), videos/s and the remaining time. Bad input, a folder in use, a corrupt manifest or
shard and a failed write (full disk) end with one `error: ...` line, keeping what the folder held;
a video that cannot be used goes to errors.tsv and the run goes on.
"""

import os

# As the other tools: tensorflow_hub is built for tf_keras; select it before TensorFlow loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import sys

from absl import app
from absl import flags

from . import cli
from . import job as job_lib
from . import runner
# pylint: enable=g-import-not-at-top,wrong-import-position

_DECODE_WORKERS = flags.DEFINE_integer(
    "decode_workers", 2, "Decoding processes (each fed by a thread that also preprocesses) "
    "working ahead of the model.", lower_bound=1)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  try:
    job = cli.job_from_flags()
    runner.run(job, batch_size=cli.BATCH_SIZE.value, shard_size=cli.SHARD_SIZE.value,
               decode_workers=_DECODE_WORKERS.value, decode_memory_mb=cli.DECODE_MEMORY_MB.value,
               decode_timeout=cli.DECODE_TIMEOUT.value,
               progress=lambda line: print(line, flush=True))
  except job_lib.USER_ERRORS as error:
    sys.exit(f"error: {error}")


def cli_main():
  """The `video-swin-extract-features` console script."""
  app.run(main)


if __name__ == "__main__":
  cli_main()
