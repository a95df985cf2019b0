r"""Speed of the single-machine feature extraction, end to end, on synthetic videos.

  python -m benchmarks.extraction_speed                     # small model, quick (about a minute)
  python -m benchmarks.extraction_speed --model_size=swin_t --num_videos=2   # the real Swin-T

Writes `--num_videos` H.264 mp4s (tests/synthetic_videos.py), exports a random-weight model of
`--model_size` (small: the tests' narrow architecture at 8x56x56 on 64-frame 96x128 videos;
swin_t: Swin-T at 32x224x224 on 10 s, 30 fps, 256x340 Kinetics-sized videos) through the real
`FeatureExtractor.save`, runs the extraction (`extraction.runner.run`) over the videos with the
Kinetics protocol twice, into two output folders:

  before: the first implementation's decoding: every frame of a video decoded in the decoding
    thread itself (in this process, all frames held in memory), then the sampled ones picked;
  after: the current one: decoding processes (`extraction.decode_worker`) that stream through the
    video and keep only the sampled frames;

and prints, for each, videos/s, clips/s, views/s (one view = one crop of one clip = one model
input) and where the time went: decoding and preprocessing (summed over the decoding threads,
which overlap the model) against the model calls; then the after/before throughput ratio.
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

import av

from video_swin_hub.extraction import decode_worker
from video_swin_hub.extraction import job as job_lib
from video_swin_hub.extraction import runner
from video_swin_hub.extraction import sampling as sampling_lib
from video_swin_hub.extraction import video as video_lib
from video_swin_hub.hub_models import variants
from video_swin_hub.hub_models.backbone import VideoSwinBackbone
from video_swin_hub.hub_models.hub_module import FeatureExtractor
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


class WholeVideoDecoder:
  """The "before" frame source: decodes every frame of the video in the calling thread (as
  `video.decode` did before decoding moved to worker processes), then picks the sampled ones."""

  def sample(self, path: str, sampling: sampling_lib.Sampling,
             min_frames: int) -> video_lib.SampledFrames:
    try:
      with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    except (av.FFmpegError, IndexError, ValueError) as error:
      raise video_lib.VideoError(path, f"cannot decode: {error}") from error
    if len(frames) < max(min_frames, 1):
      raise video_lib.VideoError(path, f"too short: {len(frames)} decodable frames")
    indices = sampling_lib.frame_indices(sampling, len(frames))
    unique, inverse = np.unique(indices, return_inverse=True)
    return video_lib.SampledFrames(frames[unique], inverse.reshape(indices.shape), len(frames))


def export_random_model(path: str, arch: variants.Architecture, input_size) -> str:
  """Saves a random-weight feature extractor taking `[None, 3, *input_size]` to `path`."""
  tf.keras.utils.set_random_seed(0)
  backbone = VideoSwinBackbone(arch)
  backbone(tf.zeros([1, *input_size, 3]))
  FeatureExtractor(backbone, input_size).save(path)
  return path


def report(name: str, summary: runner.Summary, job: job_lib.Job) -> float:
  """Prints one implementation's figures; returns its videos/s."""
  timings = summary.timings
  clips = summary.extracted * job.sampling.num_clips
  videos_per_s = summary.extracted / summary.seconds
  print(f"{name}: wall {summary.seconds:.2f} s: {videos_per_s:.3f} videos/s, "
        f"{clips / summary.seconds:.2f} clips/s, {timings.views / summary.seconds:.2f} views/s "
        f"({job.sampling.num_clips} clips x {job.sampling.num_crops} crops per video)")
  print(f"  decode {timings.decode:.2f} s ({timings.decode / summary.extracted:.3f} s/video), "
        f"preprocess {timings.preprocess:.2f} s ({timings.preprocess / summary.extracted:.3f} "
        f"s/video), summed over threads; model {timings.model:.2f} s "
        f"({timings.model / timings.views:.4f} s/view)", flush=True)
  return videos_per_s


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
    throughput = {}
    # The decoding processes are started before the timing, as the model is warmed up: their
    # start (about 0.2 s each) is a fixed cost per run, not a cost per video.
    workers = decode_worker.WorkerPool(_DECODE_WORKERS.value)
    workers.wait_ready()
    for name, source in (("before (whole-video decoding in threads)", WholeVideoDecoder()),
                         ("after (streaming decoding in worker processes)", workers)):
      job = job_lib.make_job(model=model_dir, videos=os.path.join(workdir, "*.mp4"),
                             output=os.path.join(workdir, f"features-{len(throughput)}"),
                             num_clips=_NUM_CLIPS.value, num_crops=int(_NUM_CROPS.value))
      if not throughput:
        print(f"{_MODEL_SIZE.value} model, input {'x'.join(map(str, input_size))}, feature "
              f"{job.model.feature_dim}; {_NUM_VIDEOS.value} videos of {num_frames} frames "
              f"{height}x{width}; {job.sampling.num_clips} clips x {job.sampling.num_crops} "
              f"crops, batch {_BATCH_SIZE.value}, {_DECODE_WORKERS.value} decoding threads",
              flush=True)
      # The first call traces and allocates: keep it out of the timings.
      job.model(np.zeros([_BATCH_SIZE.value, 3, *input_size], np.float32))
      summary = runner.run(job, batch_size=_BATCH_SIZE.value,
                           decode_workers=_DECODE_WORKERS.value, frame_source=source,
                           progress=lambda line: None)
      throughput[name] = report(name, summary, job)
    workers.close()
  before, after = throughput.values()
  print(f"after/before throughput: {after / before:.3f}")


if __name__ == "__main__":
  app.run(main)
