"""A checked extraction job: its videos, model, sampling, output folder and what is already done.

`make_job` checks everything before anything is written: the videos are listed, the model is
loaded (its signature gives T, H, W and D, or `clip_size` gives T, H, W), the sampling settings are
validated against it, and an existing output folder must hold features made with the same
settings. `resume` reads what the folder already holds; the tools call it while holding the
folder's lock, so no other run can add to it in between.
"""

import dataclasses
from typing import List, Optional, Set, Tuple

from . import inputs
from . import model as model_lib
from . import records
from . import sampling as sampling_lib

# Bad input that ends a run before anything is written.
USER_ERRORS = (inputs.InputError, model_lib.ModelError, sampling_lib.SamplingError,
               records.OutputError)


@dataclasses.dataclass(frozen=True)
class Job:
  """What one run extracts and where.

  Attributes:
    model: the loaded feature extractor.
    sampling: views per video, sized for the model.
    min_frames: videos with fewer decodable frames fail.
    output: the output folder.
    video_root: video ids are paths relative to it.
    videos: every listed video, sorted by id.
    done: ids of listed videos whose features the output folder already holds (see `resume`).
  """
  model: model_lib.FeatureModel
  sampling: sampling_lib.Sampling
  min_frames: int
  output: str
  video_root: str
  videos: List[inputs.VideoRef]
  done: Set[str]

  @property
  def todo(self) -> List[inputs.VideoRef]:
    return [v for v in self.videos if v.video_id not in self.done]

  def manifest(self, *, done: int, failed: int, complete: bool, runner: str) -> dict:
    return records.manifest(
        model=self.model.handle, signature=self.model.signature,
        input_size=self.model.input_size,
        feature_dim=self.model.feature_dim, sampling=dataclasses.asdict(self.sampling),
        min_frames=self.min_frames, video_root=self.video_root, listed=len(self.videos),
        done=done, failed=failed, complete=complete, runner=runner)


def make_job(*, model: str, videos: str, output: str, video_root: Optional[str] = None,
             protocol: str = sampling_lib.KINETICS, num_clips: Optional[int] = None,
             frame_interval: int = 2, num_crops: int = 3, short_side: Optional[int] = None,
             min_frames: int = 1, clip_size: Optional[Tuple[int, int, int]] = None) -> Job:
  """Checks the inputs and builds the Job; the defaults are the Kinetics test protocol.

  Args:
    model: the model handle.
    videos: a glob, or a .txt/.lst file listing paths (see `inputs`).
    output: the output folder.
    video_root: see `inputs.list_videos`.
    protocol: sampling.KINETICS or sampling.SSV2.
    num_clips: clips per video; None: 4 for kinetics, 1 for ssv2.
    frame_interval: frame step inside a kinetics clip.
    num_crops: 1 or 3.
    short_side: resized short side; None: the model's crop size.
    min_frames: videos with fewer decodable frames fail.
    clip_size: (T, H, W) of the clips to sample; the model's `serving_dynamic` signature is then
      called (it must have one). None: the size of its `serving_default` signature.

  Raises:
    One of USER_ERRORS.
  """
  root, refs = inputs.list_videos(videos, video_root)
  loaded = model_lib.FeatureModel(model, clip_size)
  clip_len, height, width = loaded.input_size
  sampling = sampling_lib.Sampling(
      protocol=protocol, clip_len=clip_len, crop_size=(height, width),
      num_clips=num_clips or (4 if protocol == sampling_lib.KINETICS else 1),
      num_crops=num_crops, short_side=short_side or max(height, width),
      frame_interval=frame_interval)
  job = Job(loaded, sampling, min_frames, output, root, refs, set())
  records.check_compatible(output, job.manifest(done=0, failed=0, complete=False, runner=""))
  return job


def resume(job: Job) -> Job:
  """`job` with `done` read from its output folder (checked again for compatible settings).

  Raises:
    records.OutputError: the folder's manifest or a shard is corrupt or unreadable, or its
      settings differ.
  """
  records.check_compatible(job.output, job.manifest(done=0, failed=0, complete=False, runner=""))
  return dataclasses.replace(job, done=records.done_ids(job.output) &
                             {v.video_id for v in job.videos})


def failed_count(job: Job, done: Set[str]) -> int:
  """Listed videos not in `done` that have lines in the folder's errors.tsv."""
  failed_paths = {path for path, _, _ in records.read_errors(job.output)}
  return sum(1 for v in job.videos if v.video_id not in done and v.path in failed_paths)
