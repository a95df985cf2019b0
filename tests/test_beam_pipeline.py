"""The Beam pipeline (local runner) writes what the single-machine tool writes, for the same
videos, loads the model once per worker process and resumes a folder either tool began."""

import json

import numpy as np
import pytest

import extraction_fixtures as fx
# pytest finds these fixtures in the module namespace.
from extraction_fixtures import model_dir, videos  # pylint: disable=unused-import
from extraction import beam_pipeline
from extraction import job as job_lib
from extraction import model as model_lib
from extraction import records
from extraction import runner


def quiet(unused_line):
  pass


def test_pipeline_output_equals_the_tool_output(model_dir, videos, tmp_path):
  tool_output, beam_output = tmp_path / "tool", tmp_path / "beam"
  job = job_lib.make_job(model=model_dir, videos=f"{videos}/all.txt", output=str(tool_output),
                         **fx.JOB_SETTINGS)
  runner.run(job, **fx.RUN_SETTINGS, progress=quiet)

  # Unknown flags are Beam pipeline options: two worker threads here.
  result = fx.run_module("extraction.beam_pipeline", f"--model={model_dir}",
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

  monkeypatch.setattr(model_lib, "FeatureModel", CountingModel)
  beam_pipeline.run(job, ["--direct_num_workers=2", "--direct_running_mode=multi_threading"],
                    **fx.RUN_SETTINGS, progress=quiet)
  assert loads == [model_dir]
  assert list(fx.rows(output)) == list(fx.GOOD)
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["videos"] == {"listed": 5, "done": 3, "failed": 2, "pending": 0}
  assert manifest["complete"] is True


def test_cli_refuses_a_missing_model_with_one_line(videos, tmp_path):
  result = fx.run_module("extraction.beam_pipeline", f"--model={tmp_path}/no_model",
                         f"--videos={videos}/all.txt", f"--output={tmp_path}/out")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: cannot load model {tmp_path}/no_model: "), result.stderr[-2000:]
  assert not (tmp_path / "out").exists()
