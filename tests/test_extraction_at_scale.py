"""Extraction at scale: one run per output folder, kill-safe resume, memory that does not grow
with video length, decoder crashes and limits contained, one-line errors for damaged folders and
a full disk, and clips of any size through `serving_dynamic`."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import extraction_fixtures as fx
# pytest finds these fixtures in the module namespace.
from extraction_fixtures import model_dir, videos  # pylint: disable=unused-import
from synthetic_videos import write_mp4
from video_swin_hub.extraction import decode_worker
from video_swin_hub.extraction import extractor
from video_swin_hub.extraction import inputs
from video_swin_hub.extraction import job as job_lib
from video_swin_hub.extraction import model as model_lib
from video_swin_hub.extraction import preprocess
from video_swin_hub.extraction import records
from video_swin_hub.extraction import runner
from video_swin_hub.extraction import sampling as sampling_lib
from video_swin_hub.extraction import video as video_lib
from tools import extraction_folder_check as check

SMALL_SAMPLING = sampling_lib.Sampling("kinetics", 8, (56, 56), num_clips=2, num_crops=3,
                                       short_side=56)


def quiet(unused_line):
  pass


def last_line(result):
  return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def reference(model_dir, videos, tmp_path_factory):
  """The folder of one uninterrupted run over every test video."""
  output = tmp_path_factory.mktemp("reference") / "features"
  job = job_lib.make_job(model=model_dir, videos=f"{videos}/all.txt", output=str(output),
                         **fx.JOB_SETTINGS)
  runner.run(job, **fx.RUN_SETTINGS, progress=quiet)
  return output


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory):
  """(short, long) 640x360 videos at 12 fps: 10 s (120 frames) and 150 s (1800 frames)."""
  folder = tmp_path_factory.mktemp("long")
  return tuple(write_mp4(folder / f"{name}.mp4", frames, 360, 640, fps=12, preset="ultrafast",
                         noise=False)
               for name, frames in (("short", 120), ("long", 1800)))


def folder_bytes(folder):
  """{name: content} of the folder's files but the lock (which records its latest holder)."""
  return {name: (folder / name).read_bytes() for name in os.listdir(folder) if name != ".lock"}


def tool_args(model_dir, videos, output):
  return (f"--model={model_dir}", f"--videos={videos}/all.txt", f"--output={output}", *fx.FLAGS)


def test_a_second_run_on_the_folder_is_refused_and_the_first_is_unharmed(model_dir, videos,
                                                                          reference, tmp_path):
  output = tmp_path / "out"
  first = subprocess.Popen(
      [sys.executable, "-m", "video_swin_hub.extraction.extract_features", *tool_args(model_dir, videos, output)],
      cwd=fx.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lock = output / ".lock"
  deadline = time.monotonic() + 240
  while not (lock.exists() and f'"pid": {first.pid}' in lock.read_text()):
    assert first.poll() is None and time.monotonic() < deadline, "the first run never locked"
    time.sleep(0.02)
  os.kill(first.pid, signal.SIGSTOP)  # Caught in the middle of its run, holding the lock.
  try:
    second = fx.run_module("video_swin_hub.extraction.extract_features", *tool_args(model_dir, videos, output))
  finally:
    os.kill(first.pid, signal.SIGCONT)
  first.communicate(timeout=300)
  assert first.returncode == 0
  assert second.returncode == 1
  assert re.fullmatch(
      rf"error: {output} is in use by pid {first.pid} on host {re.escape(socket.gethostname())} "
      r"\(started \S+\): one run per output folder at a time", last_line(second)), second.stderr
  assert check.problems(str(output), str(reference)) == []
  assert len(check.complete_error_lines(str(output))) == len(fx.BAD)  # each failure once


def test_sigkill_at_random_moments_then_rerun_ends_as_an_uninterrupted_run(model_dir, videos,
                                                                           tmp_path):
  # Seed 16 draws the kills at 36%, 48% and 42% of their phase: a trial run that is faster than
  # the timed reference run (the other test worker's load varies) is still killed, not finished.
  result = subprocess.run(
      [sys.executable, "-m", "tools.extraction_kill_trials", f"--model={model_dir}",
       f"--videos={videos}/all.txt", f"--workdir={tmp_path}", "--trials=3", "--seed=16", "--",
       *fx.FLAGS, "--shard_size=1"], cwd=fx.REPO, capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  trials = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  assert len(trials) == 3 and all(t["problems"] == [] for t in trials)
  assert "3/3 trials ended as the uninterrupted run" in result.stdout
  # The kills did land while the tool was running.
  assert sum(t["state"] == "killed" for t in trials) >= 2


def test_the_folder_check_rejects_what_it_exists_to_reject(reference, tmp_path):
  damaged = tmp_path / "damaged"
  shutil.copytree(reference, damaged)
  assert check.problems(str(damaged), str(reference)) == []
  shard = records.shard_paths(str(damaged))[0]
  shutil.copy(shard, str(damaged / "features-copy-00000.tfrecord"))
  (damaged / ".tmp-features-killed-00000.tfrecord").write_bytes(b"half")
  lines = check.complete_error_lines(str(damaged))
  (damaged / "errors.tsv").write_text(f"{records.ERRORS_HEADER}\n{lines[0]}\n")
  found = " | ".join(check.problems(str(damaged), str(reference), earlier_errors=lines))
  assert "stored more than once" in found and "temporaries left" in found
  assert "error rows" in found and "error lines of an earlier run lost" in found


MEASURE_TOOL_PEAK_RSS = """
import json, re, sys
from video_swin_hub.extraction import job as job_lib, runner
source = None
if sys.argv[4] == "whole_video":
  from benchmarks.extraction_speed import WholeVideoDecoder
  source = WholeVideoDecoder()
job = job_lib.make_job(model=sys.argv[1], videos=sys.argv[2], output=sys.argv[3], num_clips=2,
                       short_side=56)
summary = runner.run(job, batch_size=6, frame_source=source, progress=lambda line: None)
assert summary.extracted == 1, summary
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so it would report the
# parent's size (pytest's) whenever that is larger.
print(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1))
"""

# From a small process, so that the worker's figure is its own (a forked child's peak RSS counts
# what it shared with its parent before exec).
MEASURE_DECODER_PEAK_RSS = """
import resource, sys
from video_swin_hub.extraction import decode_worker, sampling
kinetics = sampling.Sampling("kinetics", 8, (56, 56), num_clips=2, num_crops=3, short_side=56)
with decode_worker.WorkerPool(1) as pool:
  pool.sample(sys.argv[1], kinetics, 1)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_kib(script, *args):
  """The last line of `script`'s output run in a fresh process: a peak RSS in KiB."""
  result = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=fx.REPO,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return int(result.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_video_length(model_dir, long_videos, tmp_path):
  short, long = long_videos
  tool = {name: peak_rss_kib(MEASURE_TOOL_PEAK_RSS, model_dir, video, tmp_path / name, "workers")
          for name, video in (("short", short), ("long", long))}
  decoder = {name: peak_rss_kib(MEASURE_DECODER_PEAK_RSS, video)
             for name, video in (("short", short), ("long", long))}
  # The measure rejects what it is for: decoding every frame (1800 x 640x360 RGB, 1.2 GB).
  whole = peak_rss_kib(MEASURE_TOOL_PEAK_RSS, model_dir, long, tmp_path / "whole", "whole_video")
  print(f"peak RSS KiB of the tool {tool}, of its decoding process {decoder}; long video "
        f"decoded whole: {whole}")
  assert tool["long"] <= 1.3 * tool["short"]
  assert decoder["long"] <= 1.3 * decoder["short"]
  assert whole > 1.3 * tool["short"]


def test_a_decoder_crash_becomes_that_videos_error(model_dir, videos, long_videos, reference):
  model = model_lib.FeatureModel(model_dir)
  refs = [inputs.VideoRef("long.mp4", long_videos[1])] + [
      inputs.VideoRef(name, str(videos / name)) for name in fx.GOOD]
  with decode_worker.WorkerPool(1) as pool:
    (victim,) = pool.pids()

    def crash():
      time.sleep(0.5)  # The worker is busy with the long video (about 2 s of decoding).
      os.kill(victim, signal.SIGSEGV)

    killer = threading.Thread(target=crash)
    killer.start()
    results = list(extractor.extract(refs, model, SMALL_SAMPLING, min_frames=4, batch_size=4,
                                     decode_workers=1, frame_source=pool))
    killer.join()
    assert pool.pids() and pool.pids() != [victim]  # replaced by a new worker
  by_id = {r.video.video_id: r for r in results}
  assert by_id["long.mp4"].error == "decoder crashed (SIGSEGV)"
  want, _ = check.stored_rows(str(reference))
  for name in fx.GOOD:
    assert by_id[name].error is None
    np.testing.assert_allclose(by_id[name].features, want[name][0], atol=1e-5, rtol=0)


def test_memory_and_time_limits_become_error_rows(videos, long_videos):
  many_clips = sampling_lib.Sampling("kinetics", 8, (56, 56), num_clips=40, num_crops=1,
                                     short_side=56)
  with decode_worker.WorkerPool(1, memory_limit_mb=200) as pool:
    # 320 distinct 640x360 frames (221 MB) do not fit in 200 MB; 16 of them do.
    with pytest.raises(video_lib.VideoError,
                       match="needs more than the decoding memory limit of 200 MiB"):
      pool.sample(long_videos[1], many_clips, 1)
    assert pool.sample(long_videos[1], SMALL_SAMPLING, 1).frames.shape == (16, 360, 640, 3)
  with decode_worker.WorkerPool(1, timeout_s=0.3) as pool:
    with pytest.raises(video_lib.VideoError, match="decoding took longer than the limit of 0.3"):
      pool.sample(long_videos[1], SMALL_SAMPLING, 1)
    assert pool.sample(str(videos / "a.mp4"), SMALL_SAMPLING, 1).num_frames == 40


def hostile_copies(source, folder):
  """Truncated and bit-flipped copies of `source`."""
  data = open(source, "rb").read()
  rng = np.random.default_rng(0)
  paths = []
  for fraction in (0.05, 0.3, 0.6, 0.95):
    paths.append(folder / f"truncated-{fraction}.mp4")
    paths[-1].write_bytes(data[:int(len(data) * fraction)])
  for seed in range(4):
    flipped = bytearray(data)
    for offset in rng.integers(0, len(data), 20 * (seed + 1)):
      flipped[offset] ^= 1 << int(rng.integers(0, 8))
    paths.append(folder / f"flipped-{seed}.mp4")
    paths[-1].write_bytes(bytes(flipped))
  return paths


def test_damaged_files_give_features_or_error_rows(model_dir, videos, tmp_path):
  paths = hostile_copies(videos / "a.mp4", tmp_path)
  refs = [inputs.VideoRef(p.name, str(p)) for p in paths]
  results = list(extractor.extract(refs, model_lib.FeatureModel(model_dir), SMALL_SAMPLING,
                                   batch_size=4, decode_workers=2))
  assert sorted(r.video.video_id for r in results) == sorted(p.name for p in paths)
  for result in results:
    assert (result.error is None) != (result.features is None)
  assert results and any(r.error for r in results)


def test_corrupt_manifest_or_shard_gives_one_line_and_keeps_the_folder(model_dir, videos,
                                                                        reference, tmp_path):
  for damage in ("manifest", "shard"):
    output = tmp_path / damage
    shutil.copytree(reference, output)
    if damage == "manifest":
      (output / "manifest.json").write_text('{"model": "half a manif')
      expected = f"error: {output}/manifest.json is corrupt ("
    else:
      shard = records.shard_paths(str(output))[0]
      data = bytearray(open(shard, "rb").read())
      data[len(data) // 2] ^= 0xFF
      open(shard, "wb").write(bytes(data))
      expected = f"error: shard {shard} is corrupt ("
    before = folder_bytes(output)
    result = fx.run_module("video_swin_hub.extraction.extract_features", *tool_args(model_dir, videos, output))
    assert result.returncode == 1
    assert last_line(result).startswith(expected), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert folder_bytes(output) == before


def test_an_output_path_that_is_a_file_is_refused(model_dir, videos, tmp_path):
  (tmp_path / "file").write_text("not a folder")
  with pytest.raises(records.OutputError, match="it is a file, not a folder"):
    job_lib.make_job(model=model_dir, videos=f"{videos}/good.txt", output=str(tmp_path / "file"))


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs (needs the right to mount; skipped otherwise)."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, check=False)
  if result.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
  yield mount_point
  subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_gives_one_error_and_keeps_earlier_results(model_dir, videos, small_disk):
  output = small_disk / "out"

  def make_job(video_list):
    return job_lib.make_job(model=model_dir, videos=video_list, output=str(output),
                            video_root=str(videos), **fx.JOB_SETTINGS)

  runner.run(make_job(f"{videos}/good.txt"), **fx.RUN_SETTINGS, progress=quiet)
  before = fx.rows(output)
  saved = folder_bytes(output)
  filler = small_disk / "filler"
  with open(filler, "wb", buffering=0) as f:
    with pytest.raises(OSError):
      while True:
        f.write(bytes(4096))
  with pytest.raises(records.OutputError, match="No space left on device"):
    runner.run(make_job(f"{videos}/all.txt"), **fx.RUN_SETTINGS, progress=quiet)
  assert folder_bytes(output) == saved
  assert list(fx.rows(output)) == list(before)
  filler.unlink()
  summary = runner.run(make_job(f"{videos}/all.txt"), **fx.RUN_SETTINGS, progress=quiet)
  assert (summary.extracted, summary.failed) == (0, 2) and list(fx.rows(output)) == list(fx.GOOD)


class TwoSignatures(tf.Module):
  """features = [per-channel mean of the clip (3), T, H, W]: shows which size it was given."""

  @tf.function(input_signature=[tf.TensorSpec([None, 3, 4, 32, 32], tf.float32)])
  def fixed(self, video):
    return self.dynamic(video)

  @tf.function(input_signature=[tf.TensorSpec([None, 3, None, None, None], tf.float32)])
  def dynamic(self, video):
    means = tf.reduce_mean(video, axis=[2, 3, 4])
    size = tf.cast(tf.shape(video)[2:], tf.float32)
    return {"features": tf.concat([means, tf.tile(size[None], [tf.shape(video)[0], 1])], 1)}


@pytest.fixture(scope="module")
def two_signature_models(tmp_path_factory):
  """(a SavedModel with serving_default and serving_dynamic, one with serving_default only)."""
  folder = tmp_path_factory.mktemp("tiny")
  module = TwoSignatures()
  both, fixed_only = str(folder / "both"), str(folder / "fixed_only")
  tf.saved_model.save(module, both, signatures={"serving_default": module.fixed,
                                                "serving_dynamic": module.dynamic})
  tf.saved_model.save(module, fixed_only, signatures={"serving_default": module.fixed})
  return both, fixed_only


def test_clip_size_samples_that_size_and_calls_serving_dynamic(two_signature_models, videos,
                                                               tmp_path):
  both, _ = two_signature_models
  for clip_size, output in (((6, 40, 40), tmp_path / "any"), (None, tmp_path / "default")):
    job = job_lib.make_job(model=both, videos=f"{videos}/good.txt", output=str(output),
                           num_clips=2, num_crops=1, short_side=48, clip_size=clip_size)
    runner.run(job, batch_size=3, progress=quiet)
    size = clip_size or (4, 32, 32)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["input_size"] == list(size)
    assert manifest["signature"] == ("serving_dynamic" if clip_size else "serving_default")
    assert manifest["sampling"]["clip_len"] == size[0]
    assert manifest["sampling"]["crop_size"] == list(size[1:])
    sampling = sampling_lib.Sampling("kinetics", size[0], size[1:], num_clips=2, num_crops=1,
                                     short_side=48)
    for video_id, row in fx.rows(output).items():
      np.testing.assert_array_equal(row["features"][3:], size)
      views = preprocess.views(fx.decode_all(videos / video_id), sampling)
      np.testing.assert_allclose(row["features"][:3], views.mean(axis=(0, 2, 3, 4)), atol=1e-5)


def test_clip_size_is_refused_without_serving_dynamic(two_signature_models, videos, tmp_path):
  _, fixed_only = two_signature_models
  for value, expected in ((
      "6,40,40", f"error: model {fixed_only} has no serving_dynamic signature (--clip_size needs "
      "a model exported with any-size input)"), (
          "6,40", "error: --clip_size must be three positive integers T,H,W, not 6,40")):
    result = fx.run_module("video_swin_hub.extraction.extract_features", f"--model={fixed_only}",
                           f"--videos={videos}/good.txt", f"--output={tmp_path}/out",
                           f"--clip_size={value}")
    assert result.returncode == 1 and last_line(result) == expected, result.stderr[-2000:]
    assert not (tmp_path / "out").exists()
