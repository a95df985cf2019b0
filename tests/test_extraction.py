"""The single-machine extraction tool on real videos: decoding, ids, features against direct
calls of the model, output files, resuming after an interruption, and its command line."""

import json
import re
import wave

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

import extraction_fixtures as fx
# pytest finds these fixtures in the module namespace.
from extraction_fixtures import model_dir, videos  # pylint: disable=unused-import
from video_swin_hub.extraction import extractor
from video_swin_hub.extraction import inputs
from video_swin_hub.extraction import job as job_lib
from video_swin_hub.extraction import preprocess
from video_swin_hub.extraction import records
from video_swin_hub.extraction import runner
from video_swin_hub.extraction import sampling
from video_swin_hub.extraction import video as video_lib

FEATURE_DIM = 192  # 8 x the small test architecture's embed_dim of 24.


@pytest.fixture(scope="module")
def signature(model_dir):
  return hub.load(model_dir).signatures["serving_default"]


@pytest.fixture(scope="module")
def cli_run(model_dir, videos, tmp_path_factory):
  """(output folder, completed process) of one command-line run over every test video."""
  output = tmp_path_factory.mktemp("cli") / "features"
  result = fx.run_module("video_swin_hub.extraction.extract_features", f"--model={model_dir}",
                         f"--videos={videos}/all.txt", f"--output={output}", *fx.FLAGS)
  assert result.returncode == 0, result.stderr[-3000:]
  return output, result


def quiet(unused_line):
  pass


def test_sample_keeps_only_the_sampled_frames(videos):
  path = str(videos / "a.mp4")
  every = fx.decode_all(path)
  assert every.shape == (40, 48, 64, 3)
  indices = np.array([[3, 5, 7], [35, 37, 39]])
  got = video_lib.sample(path, lambda n: indices if n == 40 else None)
  assert got.num_frames == 40 and got.frames.dtype == np.uint8
  assert got.frames.shape == (6, 48, 64, 3)  # the six distinct frames, no other
  np.testing.assert_array_equal(got.frames[got.clip_frames], every[indices])
  # Repeated indices are decoded once.
  got = video_lib.sample(str(videos / "sub" / "b.mp4"), lambda n: np.array([[0, 0, 23, 0]]))
  assert got.frames.shape == (2, 96, 80, 3) and got.clip_frames.tolist() == [[0, 0, 1, 0]]


def test_decode_errors_name_the_file(videos, tmp_path):
  with wave.open(str(tmp_path / "sound.wav"), "wb") as sound:
    sound.setnchannels(1)
    sound.setsampwidth(2)
    sound.setframerate(8000)
    sound.writeframes(bytes(1600))
  cases = {videos / "corrupt.mp4": "cannot decode: Invalid data found when processing input",
           tmp_path / "missing.mp4": "cannot decode: No such file or directory",
           tmp_path / "sound.wav": "no video stream"}
  first_frame = lambda n: np.zeros([1, 1], np.int64)
  for path, reason in cases.items():
    with pytest.raises(video_lib.VideoError) as error:
      video_lib.sample(str(path), first_frame)
    assert error.value.reason == reason and str(error.value) == f"{path}: {reason}"
  with pytest.raises(video_lib.VideoError, match="too short: 2 decodable frames, at least 4"):
    video_lib.sample(str(videos / "short.mp4"), first_frame, min_frames=4)


def test_ids_are_paths_under_the_root(videos):
  root, refs = inputs.list_videos(f"{videos}/all.txt")
  assert root == str(videos)
  assert [r.video_id for r in refs] == sorted(fx.GOOD + tuple(fx.BAD))  # duplicate dropped
  assert all(r.path == f"{videos}/{r.video_id}" for r in refs)
  root, refs = inputs.list_videos(f"{videos}/*/*.mp4")
  assert root == str(videos) and [r.video_id for r in refs] == ["sub/b.mp4"]
  root, refs = inputs.list_videos(f"{videos}/sub/*.mp4", video_root=str(videos))
  assert [r.video_id for r in refs] == ["sub/b.mp4"]
  with pytest.raises(inputs.InputError, match="not under the video root"):
    inputs.list_videos(f"{videos}/*.mp4", video_root=str(videos / "sub"))
  with pytest.raises(inputs.InputError, match="no videos matched"):
    inputs.list_videos(f"{videos}/*.avi")


def test_cli_writes_shards_manifest_and_errors(cli_run, model_dir, videos):
  output, result = cli_run
  names = fx.visible_files(output)
  shards = [n for n in names if n.startswith("features-")]
  assert names == sorted(shards + [".lock", "errors.tsv", "manifest.json"])
  assert len(shards) == 2  # 3 videos in shards of 2
  assert list(fx.rows(output)) == list(fx.GOOD)

  manifest = json.loads((output / "manifest.json").read_text())
  assert manifest["model"] == model_dir and manifest["input_size"] == [8, 56, 56]
  assert manifest["signature"] == "serving_default"
  assert manifest["feature_dim"] == FEATURE_DIM and manifest["video_root"] == str(videos)
  assert manifest["sampling"] == {"protocol": "kinetics", "clip_len": 8, "crop_size": [56, 56],
                                  "num_clips": 2, "num_crops": 3, "short_side": 56,
                                  "frame_interval": 2}
  assert manifest["videos"] == {"listed": 5, "done": 3, "failed": 2, "pending": 0}
  assert manifest["complete"] is True

  lines = (output / "errors.tsv").read_text().splitlines()
  assert lines[0] == "path\treason\trun"
  run = lines[1].rsplit("\t", 1)[1]
  assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{4}", run) and shards[0].startswith(f"features-{run}")
  assert sorted(lines[1:]) == [f"{videos}/{name}\t{reason}\t{run}" for name, reason in
                               sorted(fx.BAD.items())]
  assert sorted(records.read_errors(str(output))) == [(f"{videos}/{n}", r, run) for n, r in
                                                      sorted(fx.BAD.items())]
  assert "5 videos listed, 0 already extracted, 5 to extract" in result.stdout
  assert "[5/5] 2 failed" in result.stdout and "extracted 3, failed 2" in result.stdout


def direct_features(signature, path, sampling):
  """The model's signature called on the video's views, averaged over them."""
  views = preprocess.views(fx.decode_all(path), sampling)
  return signature(video=tf.constant(views))["features"].numpy().mean(axis=0), len(views)


def test_features_equal_the_signature_on_the_same_views(cli_run, signature, videos):
  kinetics = sampling.Sampling("kinetics", 8, (56, 56), num_clips=2, num_crops=3, short_side=56)
  for video_id, row in fx.rows(cli_run[0]).items():
    assert row["path"] == f"{videos}/{video_id}"
    want, num_views = direct_features(signature, row["path"], kinetics)
    assert row["num_views"] == num_views == 6
    assert row["features"].shape == (FEATURE_DIM,)
    np.testing.assert_allclose(row["features"], want, atol=1e-5, rtol=0)


def test_ssv2_single_view(model_dir, signature, videos, tmp_path):
  job = job_lib.make_job(model=model_dir, videos=f"{videos}/good.txt", output=str(tmp_path),
                         protocol="ssv2", num_crops=1, short_side=64)
  summary = runner.run(job, batch_size=2, progress=quiet)
  assert (summary.extracted, summary.failed) == (3, 0) and summary.timings.views == 3
  for video_id, row in fx.rows(tmp_path).items():
    want, num_views = direct_features(signature, f"{videos}/{video_id}", job.sampling)
    assert row["num_views"] == num_views == 1
    np.testing.assert_allclose(row["features"], want, atol=1e-5, rtol=0)


def test_tfrecord_round_trip(cli_run, tmp_path):
  dataset = records.read_features(str(cli_run[0])).batch(3)
  assert dataset.element_spec["features"].shape.as_list() == [None, FEATURE_DIM]
  batch = next(iter(dataset))
  assert batch["features"].dtype == tf.float32 and batch["num_views"].dtype == tf.int64
  assert sorted(batch["video_id"].numpy().tolist()) == [v.encode() for v in fx.GOOD]

  features = np.linspace(-1, 1, 5, dtype=np.float32)
  path = str(tmp_path / "one.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(records.make_example("x/y.mp4", "/data/x/y.mp4", features, 12))
  row = next(tf.data.TFRecordDataset(path).map(records.parse_example).as_numpy_iterator())
  assert row["video_id"] == b"x/y.mp4" and row["path"] == b"/data/x/y.mp4"
  assert row["num_views"] == 12
  np.testing.assert_array_equal(row["features"], features)


def test_interrupted_run_resumes_without_recomputing(cli_run, model_dir, videos, tmp_path,
                                                     monkeypatch):
  output = tmp_path / "out"

  def make_job():
    return job_lib.make_job(model=model_dir, videos=f"{videos}/good.txt", output=str(output),
                            **fx.JOB_SETTINGS)

  real_extract = extractor.extract

  def interrupted(videos_, *args, **kwargs):
    for count, result in enumerate(real_extract(videos_, *args, **kwargs), start=1):
      yield result
      if count == 3:
        raise RuntimeError("injected interruption")

  # a and c fill the first shard; b is buffered for the second when the run dies.
  monkeypatch.setattr(extractor, "extract", interrupted)
  with pytest.raises(RuntimeError, match="injected"):
    runner.run(make_job(), **fx.RUN_SETTINGS, progress=quiet)
  names = fx.visible_files(output)
  assert len([n for n in names if n.startswith("features-")]) == 1
  assert not [n for n in names if n.startswith(records.TEMP_PREFIX)]
  assert list(fx.rows(output)) == ["a.mp4", "c.mp4"]
  manifest = json.loads((output / "manifest.json").read_text())
  assert manifest["complete"] is False and manifest["videos"]["done"] == 0

  # A run killed while writing a shard leaves a hidden temporary: never read, removed next run.
  stale = output / f"{records.TEMP_PREFIX}features-killed-00000.tfrecord"
  stale.write_bytes(b"half a shard")
  assert list(fx.rows(output)) == ["a.mp4", "c.mp4"]

  seen = []

  def spy(videos_, *args, **kwargs):
    videos_ = list(videos_)
    seen.extend(v.video_id for v in videos_)
    return real_extract(videos_, *args, **kwargs)

  monkeypatch.setattr(extractor, "extract", spy)
  summary = runner.run(make_job(), **fx.RUN_SETTINGS, progress=quiet)
  assert seen == ["sub/b.mp4"]
  assert (summary.skipped, summary.extracted, summary.failed) == (2, 1, 0)
  assert not stale.exists()
  resumed = fx.rows(output)
  assert list(resumed) == list(fx.GOOD)
  for video_id, row in fx.rows(cli_run[0]).items():
    np.testing.assert_allclose(resumed[video_id]["features"], row["features"], atol=1e-5, rtol=0)
  manifest = json.loads((output / "manifest.json").read_text())
  assert manifest["complete"] is True
  assert manifest["videos"] == {"listed": 3, "done": 3, "failed": 0, "pending": 0}

  # Nothing left to do: nothing is extracted again.
  seen.clear()
  summary = runner.run(make_job(), **fx.RUN_SETTINGS, progress=quiet)
  assert seen == [] and summary.extracted == 0 and list(fx.rows(output)) == list(fx.GOOD)


def test_other_settings_cannot_add_to_a_folder(cli_run, model_dir, videos):
  with pytest.raises(records.OutputError, match="sampling"):
    job_lib.make_job(model=model_dir, videos=f"{videos}/all.txt", output=str(cli_run[0]),
                     num_clips=3, short_side=56, min_frames=4)


@pytest.mark.parametrize("args, message", [
    (["--videos={videos}/*.avi"], "error: no videos matched {videos}/*.avi"),
    (["--model={tmp}/no_model"], "error: cannot load model {tmp}/no_model: "),
])
def test_cli_refuses_bad_input_with_one_line(model_dir, videos, tmp_path, args, message):
  flags = {"model": f"--model={model_dir}", "videos": f"--videos={videos}/all.txt",
           "output": f"--output={tmp_path}/out"}
  for arg in args:
    flags[arg[2:].split("=")[0]] = arg.format(videos=videos, tmp=tmp_path)
  result = fx.run_module("video_swin_hub.extraction.extract_features", *flags.values())
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(message.format(videos=videos, tmp=tmp_path)), result.stderr[-2000:]
  assert not (tmp_path / "out").exists()
