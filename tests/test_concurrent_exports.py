"""Four real `export_all` processes publish the same version at once, into one folder and into one
fake-gcs-server bucket: exactly one succeeds, each other ends with one `error:` line naming the
winner, and the winner's version is whole and equals a single-process export and torchvision.
The bucket's version is also read as users get it (archive, docs), and a later run of the same
version is refused, leaving every object as it was.

tests/test_destinations.py and tests/test_gcs_publishing.py race fake builds many times; this
file runs the CLI itself, at a small input size to keep it cheap.
"""

import hashlib
import json
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_hub as hub

import publishing_fakes
import torch_reference
from conftest import normalise, relative_error
from video_swin_hub.export import pipeline
from video_swin_hub.export import published_models
from video_swin_hub.export.destinations import gcs
from video_swin_hub.export.destinations import local
from video_swin_hub.export.docs import validator
from video_swin_hub.hub_models import variants
from test_export_all import REPO

TINY = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
INPUT_SIZE = (8, 32, 32)
NAME = f"{TINY.name}_8x32x32"
BUCKET = "race-bucket"
RACERS = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(folder holding a random-weight official Swin-T checkpoint, the torchvision model)."""
  folder = tmp_path_factory.mktemp("ckpts")
  model = torch_reference.reference_model(TINY.architecture, TINY.num_classes, seed=21)
  torch_reference.save_official(model, folder / f"{TINY.name}.pth")
  return folder, model


@pytest.fixture(scope="module")
def video():
  """One clip `[1, 3, 8, 32, 32]`, RGB in [0, 1] (what the Hub model takes)."""
  return np.random.RandomState(5).rand(1, 3, *INPUT_SIZE).astype(np.float32)


@pytest.fixture(scope="module")
def expected(reference, video):
  """torchvision's pooled features `[1, 768]` for `video`."""
  return torch_reference.reference_outputs(reference[1], normalise(video))[0]


@pytest.fixture(scope="module")
def single_export(reference, video, tmp_path_factory):
  """The features `[1, 768]` of the same version exported by one process alone (this one)."""
  path = str(reference[0] / f"{TINY.name}.pth")
  published = pipeline.publish(
      published_models.PublishedModel(TINY, input_size=INPUT_SIZE),
      pipeline.Checkpoint(path, path, "local file"),
      local.LocalDestination(str(tmp_path_factory.mktemp("single"))), 1,
      progress=lambda _: None)
  return hub.KerasLayer(published.handle)(video).numpy()


def export_all(output_dir, checkpoint_dir, *flags):
  """Starts one export_all run of TINY at INPUT_SIZE, version 1."""
  return subprocess.Popen(
      [sys.executable, "-m", "video_swin_hub.export.export_all", f"--variants={TINY.name}",
       f"--checkpoint_dir={checkpoint_dir}", f"--output_dir={output_dir}",
       "--input_size=" + ",".join(map(str, INPUT_SIZE)), *flags],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def race(output_dir, checkpoint_dir, *flags):
  """Starts RACERS export_all runs of one version at once; returns (pid, returncode, stderr) of
  each once all ended."""
  processes = [export_all(output_dir, checkpoint_dir, *flags) for _ in range(RACERS)]
  results = []
  for process in processes:
    errors = process.communicate(timeout=600)[1]
    results.append((process.pid, process.returncode, errors))
  return results


def check_one_winner(results):
  """The winner's pid, after checking that each other run ended with one error line naming it."""
  winners = [pid for pid, code, _ in results if code == 0]
  assert len(winners) == 1, [(code, errors[-1500:]) for _, code, errors in results]
  for pid, code, errors in results:
    if pid == winners[0]:
      continue
    lines = errors.strip().splitlines()
    assert code == 1 and "Traceback" not in errors, errors[-3000:]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], errors[-3000:]
    assert re.fullmatch(rf"error: {NAME}/1 is being published by host \S+ pid {winners[0]}\b.*",
                        lines[-1]), lines[-1]
  return winners[0]


def check_version(folder, expected, single_export, video, scratch):
  """The version in `folder` (1/, 1.tar.gz, 1.manifest.json) is whole: the manifest's sha256 is
  the archive's, the archive holds exactly the SavedModel's files at its root, and both compute
  the reference's features. The archive is unpacked into the new folder `scratch`."""
  with open(folder / "1.manifest.json", encoding="utf-8") as f:
    manifest = json.load(f)
  archive = folder / "1.tar.gz"
  assert manifest["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
  assert manifest["archive_bytes"] == archive.stat().st_size
  assert validator.validate_archive(str(archive)) == []
  unpacked = scratch
  with tarfile.open(archive) as tar:
    tar.extractall(unpacked, filter="data")
    members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
  assert members == {str(p.relative_to(folder / "1")): p.read_bytes()
                     for p in (folder / "1").rglob("*") if p.is_file()}
  got = hub.KerasLayer(str(folder / "1"))(video).numpy()
  assert got.shape == expected.shape == (1, 768)
  assert relative_error(got, expected) < 1e-5
  assert relative_error(got, single_export) < 1e-5
  np.testing.assert_array_equal(hub.KerasLayer(str(unpacked))(video).numpy(), got)


def test_one_of_four_exports_into_one_folder_wins(reference, expected, single_export, video,
                                                  tmp_path):
  out = tmp_path / "out"
  check_one_winner(race(out, reference[0]))
  check_version(out / NAME, expected, single_export, video, tmp_path / "unpacked")
  assert sorted(p.name for p in (out / NAME).iterdir()) == ["1", "1.manifest.json", "1.tar.gz"]
  assert not [f for f in (out / local.STAGING_DIR).rglob("*") if f.is_file()]


@pytest.fixture(scope="module")
def emulator():
  with publishing_fakes.fake_gcs_server(BUCKET) as host:
    yield host


def bucket_objects(fs):
  """{object name below gs://BUCKET/models/: generation}."""
  fs.invalidate_cache()
  prefix = f"{BUCKET}/models/"
  return {path[len(prefix):]: fs.info(path)["generation"] for path in fs.find(prefix)}


@pytest.fixture(scope="module")
def bucket_race(emulator, reference):
  """The root and the results of RACERS runs publishing one version to the bucket at once."""
  del emulator
  root = f"gs://{BUCKET}/models"
  return root, race(root, reference[0],
                    f"--asset_base_url=https://storage.googleapis.com/{BUCKET}/models")


def test_one_of_four_exports_into_one_bucket_wins(bucket_race, expected, single_export, video,
                                                  tmp_path):
  root, results = bucket_race
  check_one_winner(results)
  fs = gcs.filesystem()
  names = bucket_objects(fs)
  assert not [n for n in names if n.startswith(gcs.STAGING_PREFIX)], names
  assert json.loads(fs.cat(f"{BUCKET}/models/{gcs.CLAIMS_PREFIX}/{NAME}/1.json"))["state"] == "done"
  fs.get(f"{root}/{NAME}/", str(tmp_path / NAME), recursive=True)  # 1/, 1.tar.gz, manifest
  check_version(tmp_path / NAME, expected, single_export, video, tmp_path / "unpacked")
  fs.get(f"{root}/tfhub.dev/assets/docs/", str(tmp_path / "docs"), recursive=True)
  assert (tmp_path / "docs" / "video-swin-hub" / "video-swin-hub.md").is_file()
  assert validator.validate_docs_root(str(tmp_path / "docs")) == []


def test_published_version_in_the_bucket_is_refused_untouched(bucket_race, reference):
  root, _ = bucket_race
  fs = gcs.filesystem()
  before = bucket_objects(fs)
  process = export_all(root, reference[0])
  errors = process.communicate(timeout=600)[1]
  assert process.returncode == 1
  last = errors.strip().splitlines()[-1]
  assert last.startswith(f"error: {root}/{NAME}/1.manifest.json already exists"), last
  assert bucket_objects(fs) == before
