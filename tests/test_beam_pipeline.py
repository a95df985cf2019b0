"""The Beam pipeline writes what the single-machine tool writes, for the same videos: on the local
runner, where it loads the model once per worker process and resumes a folder either tool began,
and on a portable runner whose SDK workers have the project only as its built wheel."""

import json
import os
import socket
import subprocess
import time

import numpy as np
import pytest

import extraction_fixtures as fx
# pytest finds these fixtures in the module namespace.
from extraction_fixtures import model_dir, videos  # pylint: disable=unused-import
from wheel_fixtures import wheel, wheel_env  # pylint: disable=unused-import
from video_swin_hub.extraction import beam_pipeline
from video_swin_hub.extraction import job as job_lib
from video_swin_hub.extraction import model as model_lib
from video_swin_hub.extraction import records
from video_swin_hub.extraction import runner
from tools import extraction_folder_check as check


def quiet(unused_line):
  pass


def test_pipeline_output_equals_the_tool_output(model_dir, videos, tmp_path):
  tool_output, beam_output = tmp_path / "tool", tmp_path / "beam"
  job = job_lib.make_job(model=model_dir, videos=f"{videos}/all.txt", output=str(tool_output),
                         **fx.JOB_SETTINGS)
  runner.run(job, **fx.RUN_SETTINGS, progress=quiet)

  # Unknown flags are Beam pipeline options: two worker threads here.
  result = fx.run_module("video_swin_hub.extraction.beam_pipeline", f"--model={model_dir}",
                         f"--videos={videos}/all.txt", f"--output={beam_output}", *fx.FLAGS,
                         "--direct_num_workers=2", "--direct_running_mode=multi_threading")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "extracted 3, failed 2, skipped 0" in result.stdout

  names = fx.visible_files(beam_output)
  shards = [n for n in names if n.startswith("features-")]
  # No Beam temporaries left.
  assert names == sorted(shards + [".lock", "errors.tsv", "manifest.json"])
  # The shard count is fixed before the run: 5 videos to extract in shards of 2.
  assert len(shards) == 3 and all(n.endswith("-of-00003.tfrecord") for n in shards)

  want, got = fx.rows(tool_output), fx.rows(beam_output)
  assert list(got) == list(want) == list(fx.GOOD)
  for video_id, row in want.items():
    assert got[video_id]["path"] == row["path"]
    assert got[video_id]["num_views"] == row["num_views"] == 6
    np.testing.assert_allclose(got[video_id]["features"], row["features"], atol=1e-5, rtol=0)

  def errors(output):
    return sorted((path, reason) for path, reason, _ in records.read_errors(str(output)))

  assert (errors(beam_output) == errors(tool_output) ==
          [(f"{videos}/{name}", reason) for name, reason in sorted(fx.BAD.items())])
  tool_manifest = json.loads((tool_output / "manifest.json").read_text())
  beam_manifest = json.loads((beam_output / "manifest.json").read_text())
  assert beam_manifest.pop("runner") == "extraction.beam_pipeline"
  assert tool_manifest.pop("runner") == "extraction.extract_features"
  assert beam_manifest == tool_manifest


def test_pipeline_loads_the_model_once_and_resumes(model_dir, videos, tmp_path, monkeypatch):
  output = str(tmp_path / "out")
  # The tool extracts two of the videos ...
  (tmp_path / "part.txt").write_text(f"{videos}/a.mp4\n{videos}/c.mp4\n")
  partial = job_lib.make_job(model=model_dir, videos=str(tmp_path / "part.txt"), output=output,
                             video_root=str(videos), **fx.JOB_SETTINGS)
  runner.run(partial, **fx.RUN_SETTINGS, progress=quiet)

  # ... and the pipeline, in this process with two worker threads, the rest.
  job = job_lib.make_job(model=model_dir, videos=f"{videos}/all.txt", output=output,
                         **fx.JOB_SETTINGS)
  assert sorted(job_lib.resume(job).done) == ["a.mp4", "c.mp4"]
  loads = []

  class CountingModel(model_lib.FeatureModel):

    def __init__(self, handle, clip_size=None):
      loads.append(handle)
      super().__init__(handle, clip_size)

  # What a killed Beam run leaves: its sinks' temporary folder and its hidden error list.
  stale_folder = tmp_path / "out" / "beam-temp-features-killed-beam-1234"
  stale_folder.mkdir()
  (stale_folder / "part").write_bytes(b"half a shard")
  stale_errors = tmp_path / "out" / f"{records.TEMP_PREFIX}errors-killed.tsv"
  stale_errors.write_text("x\ty\tkilled\n")

  monkeypatch.setattr(model_lib, "FeatureModel", CountingModel)
  beam_pipeline.run(job, ["--direct_num_workers=2", "--direct_running_mode=multi_threading"],
                    **fx.RUN_SETTINGS, progress=quiet)
  assert loads == [model_dir]
  assert not stale_folder.exists() and not stale_errors.exists()
  assert list(fx.rows(output)) == list(fx.GOOD)
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["videos"] == {"listed": 5, "done": 3, "failed": 2, "pending": 0}
  assert manifest["complete"] is True


def test_cli_refuses_a_missing_model_with_one_line(videos, tmp_path):
  result = fx.run_module("video_swin_hub.extraction.beam_pipeline", f"--model={tmp_path}/no_model",
                         f"--videos={videos}/all.txt", f"--output={tmp_path}/out")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: cannot load model {tmp_path}/no_model: "), result.stderr[-2000:]
  assert not (tmp_path / "out").exists()


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def worker_pool(wheel_env, tmp_path):
  """The port of Beam's worker pool, started from the wheel's environment (its SDK workers are
  the first `python` on PATH: that environment's)."""
  env, workdir = wheel_env
  port = free_port()
  with open(tmp_path / "worker_pool.log", "wb") as log:
    pool = subprocess.Popen(["python", "-m", "apache_beam.runners.worker.worker_pool_main",
                             f"--service_port={port}"], cwd=workdir, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 120
    while True:
      assert pool.poll() is None, (tmp_path / "worker_pool.log").read_text()[-3000:]
      try:
        socket.create_connection(("localhost", port), timeout=1).close()
        break
      except OSError:
        assert time.monotonic() < deadline, "the worker pool did not start"
        time.sleep(0.2)
    yield port
  finally:
    pool.kill()
    pool.wait()


def test_portable_runner_with_workers_that_have_only_the_wheel(model_dir, videos, wheel_env,
                                                              worker_pool, tmp_path):
  env, workdir = wheel_env
  tool_output, beam_output = tmp_path / "tool", tmp_path / "beam"
  runner.run(job_lib.make_job(model=model_dir, videos=f"{videos}/all.txt",
                              output=str(tool_output), **fx.JOB_SETTINGS),
             **fx.RUN_SETTINGS, progress=quiet)
  portable = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
              f"--environment_config=localhost:{worker_pool}"]

  def launch(module, output, launcher_env):
    return subprocess.run(
        ["python", "-m", module, f"--model={model_dir}", f"--videos={videos}/all.txt",
         f"--output={output}", *fx.FLAGS, *portable], cwd=workdir, env=launcher_env,
        capture_output=True, text=True, timeout=400, check=False)

  result = launch("video_swin_hub.extraction.beam_pipeline", beam_output, env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "extracted 3, failed 2, skipped 0" in result.stdout
  assert check.problems(str(beam_output), str(tool_output)) == []

  # The workers import nothing but the wheel: a launcher that pickles the DoFns under the
  # checkout's module names (the repository on its own path) fails on them.
  result = launch("extraction.beam_pipeline", tmp_path / "repo_names",
                  {**env, "PYTHONPATH": fx.REPO})
  assert result.returncode != 0
  assert "No module named 'extraction'" in result.stderr
