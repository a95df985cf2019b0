"""The flags that `extract_features` and `beam_pipeline` share, and the Job they describe."""

from typing import Optional, Tuple

from absl import flags

from . import job as job_lib
from . import sampling as sampling_lib

MODEL = flags.DEFINE_string(
    "model", None, "Feature extractor: any handle hub.load resolves (SavedModel folder, gs://, "
    "URL) with a serving_default signature video [None, 3, T, H, W] -> features [None, D].",
    required=True)
CLIP_SIZE = flags.DEFINE_list(
    "clip_size", None, "T,H,W: sample clips of this size and call the model's serving_dynamic "
    "signature (video [None, 3, None, None, None]); only for models that have it. Default: the "
    "size of serving_default.")
VIDEOS = flags.DEFINE_string(
    "videos", None, "Glob of video files, or a .txt/.lst file listing one path per line.",
    required=True)
OUTPUT = flags.DEFINE_string("output", None, "Output folder (local or gs://).", required=True)
VIDEO_ROOT = flags.DEFINE_string(
    "video_root", None, "Video ids are paths relative to this folder. Default: the glob's folder "
    "before its first wildcard, or the deepest folder holding every listed path.")
PROTOCOL = flags.DEFINE_enum(
    "protocol", sampling_lib.KINETICS, sampling_lib.PROTOCOLS,
    "kinetics: clips of T frames every --frame_interval frames, evenly spaced; ssv2: T frames "
    "spread uniformly over the whole video (1 clip).")
NUM_CLIPS = flags.DEFINE_integer(
    "num_clips", None, "Clips per video. Default: 4 for kinetics, 1 for ssv2.", lower_bound=1)
FRAME_INTERVAL = flags.DEFINE_integer(
    "frame_interval", 2, "Frame step inside a kinetics clip.", lower_bound=1)
NUM_CROPS = flags.DEFINE_enum("num_crops", "3", ["1", "3"],
                              "Crops per clip: 1 (centre) or 3 (along the long side).")
SHORT_SIDE = flags.DEFINE_integer(
    "short_side", None, "Frames are resized to this short side before cropping. Default: the "
    "model's crop size (224 for the published models: the papers' protocol); the single-view "
    "validation setting is --short_side=256 --num_crops=1.", lower_bound=1)
MIN_FRAMES = flags.DEFINE_integer(
    "min_frames", 1, "Videos with fewer decodable frames are errors; shorter clips loop.",
    lower_bound=1)
BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 12, "Views per model call (views of several videos share a batch).",
    lower_bound=1)
SHARD_SIZE = flags.DEFINE_integer("shard_size", 100, "Videos per TFRecord shard.", lower_bound=1)
DECODE_MEMORY_MB = flags.DEFINE_integer(
    "decode_memory_mb", 4096, "Memory limit of each decoding process (its data segment): a "
    "video that needs more becomes an error row.", lower_bound=64)
DECODE_TIMEOUT = flags.DEFINE_float(
    "decode_timeout", 600.0, "Seconds a video may take to decode before it becomes an error row.",
    lower_bound=1.0)


def _clip_size() -> Optional[Tuple[int, int, int]]:
  if CLIP_SIZE.value is None:
    return None
  try:
    size = tuple(int(n) for n in CLIP_SIZE.value)
  except ValueError:
    size = ()
  if len(size) != 3 or min(size) < 1:
    raise sampling_lib.SamplingError(
        f"--clip_size must be three positive integers T,H,W, not {','.join(CLIP_SIZE.value)}")
  return size


def job_from_flags() -> job_lib.Job:
  """`job.make_job` with the flags' values.

  Raises:
    One of job.USER_ERRORS.
  """
  return job_lib.make_job(
      model=MODEL.value, videos=VIDEOS.value, output=OUTPUT.value, video_root=VIDEO_ROOT.value,
      protocol=PROTOCOL.value, num_clips=NUM_CLIPS.value, frame_interval=FRAME_INTERVAL.value,
      num_crops=int(NUM_CROPS.value), short_side=SHORT_SIDE.value, min_frames=MIN_FRAMES.value,
      clip_size=_clip_size())
