r"""Speed of the single-machine feature extraction, end to end, on synthetic videos.

  python -m benchmarks.extraction_speed                     # small model, quick (about a minute)
  python -m benchmarks.extraction_speed --model_size=swin_t --num_videos=2   # the real Swin-T

Writes `--num_videos` H.264 mp4s (tests/synthetic_videos.py), exports a random-weight model of
`--model_size` (small: the tests' narrow architecture at 8x56x56 on 64-frame 96x128 videos;
swin_t: Swin-T at 32x224x224 on 10 s, 30 fps, 256x340 Kinetics-sized videos) through the real
`FeatureExtractor.save`, runs `extract_features.run` over the videos with the Kinetics protocol
and prints videos/s, clips/s, views/s (one view = one crop of one clip = one model input) and
where the time went: decoding and preprocessing (summed over the decoding threads, which overlap the
model) against the model calls.
"""

import os

# As the other tools: tensorflow_hub is built for tf_keras; select it before TensorFlow loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from extraction import job as job_lib
from extraction import runner
from hub_models import variants
from hub_models.backbone import VideoSwinBackbone
from hub_models.hub_module import FeatureExtractor
from tests import conftest
from tests import synthetic_videos
# pylint: enable=g-import-not-at-top,wrong-import-position

# name -> (architecture, model input (T, H, W), videos (frames, height, width))
MODEL_SIZES = {
    "small": (conftest.SMALL_ARCH, (8, 56, 56), (64, 96, 128)),
    "swin_t": (variants.get("swin_tiny_patch244_window877_kinetics400_1k").architecture,
               (32, 224, 224), (300, 256, 340)),
}

_MODEL_SIZE = flags.DEFINE_enum("model_size", "small", list(MODEL_SIZES),
                                "Architecture, input size and video size to time.")
_INPUT_SIZE = flags.DEFINE_list("input_size", None,
                                "T,H,W of the exported model. Default: --model_size's.")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 12, "Videos to extract.", lower_bound=1)
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 4, "Clips per video.", lower_bound=1)
_NUM_CROPS = flags.DEFINE_enum("num_crops", "3", ["1", "3"], "Crops per clip.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 12, "Views per model call.", lower_bound=1)
_DECODE_WORKERS = flags.DEFINE_integer("decode_workers", 2, "Decoding threads.", lower_bound=1)


def export_random_model(path: str, arch: variants.Architecture, input_size) -> str:
  """Saves a random-weight feature extractor taking `[None, 3, *input_size]` to `path`."""
  tf.keras.utils.set_random_seed(0)
  backbone = VideoSwinBackbone(arch)
  backbone(tf.zeros([1, *input_size, 3]))
  FeatureExtractor(backbone, input_size).save(path)
  return path


def main(argv):
  del argv
  arch, input_size, (num_frames, height, width) = MODEL_SIZES[_MODEL_SIZE.value]
  if _INPUT_SIZE.value:
    input_size = tuple(int(n) for n in _INPUT_SIZE.value)
  with tempfile.TemporaryDirectory() as workdir:
    for i in range(_NUM_VIDEOS.value):
      synthetic_videos.write_mp4(os.path.join(workdir, f"video{i}.mp4"), num_frames, height,
                                 width, fps=30, seed=i)
    model_dir = export_random_model(os.path.join(workdir, "model"), arch, input_size)
    job = job_lib.make_job(model=model_dir, videos=os.path.join(workdir, "*.mp4"),
                           output=os.path.join(workdir, "features"), num_clips=_NUM_CLIPS.value,
                           num_crops=int(_NUM_CROPS.value))
    print(f"{_MODEL_SIZE.value} model, input {'x'.join(map(str, input_size))}, feature "
          f"{job.model.feature_dim}; {_NUM_VIDEOS.value} videos of {num_frames} frames "
          f"{height}x{width}; {job.sampling.num_clips} clips x {job.sampling.num_crops} crops, "
          f"batch {_BATCH_SIZE.value}, {_DECODE_WORKERS.value} decoding threads", flush=True)
    # The first call traces and allocates: keep it out of the timings.
    job.model(np.zeros([_BATCH_SIZE.value, 3, *input_size], np.float32))
    summary = runner.run(job, batch_size=_BATCH_SIZE.value,
                                   decode_workers=_DECODE_WORKERS.value,
                                   progress=lambda line: None)
  timings = summary.timings
  clips = summary.extracted * job.sampling.num_clips
  print(f"wall {summary.seconds:.2f} s: {summary.extracted / summary.seconds:.3f} videos/s, "
        f"{clips / summary.seconds:.2f} clips/s, {timings.views / summary.seconds:.2f} views/s "
        f"({job.sampling.num_clips} clips x {job.sampling.num_crops} crops per video)")
  print(f"decode {timings.decode:.2f} s ({timings.decode / summary.extracted:.3f} s/video), "
        f"preprocess {timings.preprocess:.2f} s ({timings.preprocess / summary.extracted:.3f} "
        f"s/video), summed over threads")
  print(f"model {timings.model:.2f} s ({timings.model / timings.views:.4f} s/view)")


if __name__ == "__main__":
  app.run(main)
