"""gs:// publishing against a real GCS emulator (gcp-storage-emulator) started on 127.0.0.1."""

import datetime
import os
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import tensorflow_hub as hub

import torch_reference
from conftest import small_variant
from export import export_all
from export import gcs
from export import published_models
from export import validate_docs
from hub_models import variants

TINY = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "hub-bucket"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
  """A fresh in-memory emulator with one bucket; yields its URL and sets STORAGE_EMULATOR_HOST."""
  port = _free_port()
  binary = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
  process = subprocess.Popen(
      [binary, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory",
       f"--default-bucket={BUCKET}"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  host = f"http://127.0.0.1:{port}"
  deadline = time.monotonic() + 30
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      if time.monotonic() > deadline or process.poll() is not None:
        process.kill()
        raise RuntimeError("the GCS emulator did not start")
      time.sleep(0.2)
  previous = os.environ.get("STORAGE_EMULATOR_HOST")
  os.environ["STORAGE_EMULATOR_HOST"] = host
  yield host
  process.kill()
  process.wait()
  if previous is None:
    del os.environ["STORAGE_EMULATOR_HOST"]
  else:
    os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def fs(emulator):
  del emulator
  filesystem = gcs.filesystem()
  filesystem.invalidate_cache()
  return filesystem


def _objects(fs, root):
  """Object names below gs://`root`/, relative to it, sorted."""
  prefix = f"{BUCKET}/{root}/"
  return sorted(path[len(prefix):] for path in fs.find(prefix))


def run_cli(emulator, *args):
  env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator)
  return subprocess.run([sys.executable, "-m", "export.export_all", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def tiny_checkpoint_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("ckpts")
  reference = torch_reference.reference_model(TINY.architecture, TINY.num_classes, seed=4)
  torch_reference.save_official(reference, folder / f"{TINY.name}.pth")
  return folder


@pytest.fixture(scope="module")
def cli_export(emulator, tiny_checkpoint_dir):
  """One CLI run publishing Swin-T (at a small input size, to keep it quick) to gs://."""
  root = f"gs://{BUCKET}/models"
  result = run_cli(emulator, f"--variants={TINY.name}", f"--checkpoint_dir={tiny_checkpoint_dir}",
                   f"--output_dir={root}", "--input_size=8,64,64",
                   "--asset_base_url=https://storage.googleapis.com/hub-bucket/models")
  assert result.returncode == 0, result.stderr[-3000:]
  return root, result


def test_round_trip(cli_export, fs, tmp_path):
  root, result = cli_export
  name = f"{TINY.name}_8x64x64"
  assert f"[1/1] {name}: published" in result.stdout
  objects = _objects(fs, "models")
  assert f"{name}/1.tar.gz" in objects and f"{name}/1.manifest.json" in objects
  assert f"{name}/1/saved_model.pb" in objects
  assert f"{name}/1/variables/variables.index" in objects
  assert "tfhub.dev/assets/docs/video-swin-hub/video-swin-hub.md" in objects
  assert not [o for o in objects if o.startswith(gcs.STAGING_PREFIX)]

  # What users download: the archive loads with hub and matches the published folder's files.
  archive = tmp_path / "1.tar.gz"
  fs.get(f"{root}/{name}/1.tar.gz", str(archive))
  assert validate_docs.validate_archive(str(archive)) == []
  unpacked = tmp_path / "unpacked"
  with tarfile.open(archive) as tar:
    tar.extractall(unpacked, filter="data")
    members = sorted(m.name for m in tar.getmembers() if m.isfile())
  assert members == sorted(o[len(f"{name}/1/"):] for o in objects
                           if o.startswith(f"{name}/1/"))
  folder = tmp_path / "folder"
  fs.get(f"{root}/{name}/1/", str(folder), recursive=True)
  video = np.random.RandomState(0).rand(1, 3, 8, 64, 64).astype(np.float32)
  from_archive = hub.KerasLayer(str(unpacked))(video).numpy()
  from_folder = hub.KerasLayer(str(folder))(video).numpy()
  assert from_archive.shape == (1, 768)
  np.testing.assert_array_equal(from_archive, from_folder)

  docs_root = tmp_path / "docs"
  fs.get(f"{root}/tfhub.dev/assets/docs/", str(docs_root), recursive=True)
  assert validate_docs.validate_docs_root(str(docs_root)) == []


def test_existing_version_is_refused_untouched(cli_export, emulator, fs, tiny_checkpoint_dir):
  root, _ = cli_export
  before = {o: fs.info(f"{BUCKET}/models/{o}")["generation"] for o in _objects(fs, "models")}
  result = run_cli(emulator, f"--variants={TINY.name}", f"--checkpoint_dir={tiny_checkpoint_dir}",
                   f"--output_dir={root}", "--input_size=8,64,64")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: gs://") and "already exists" in last
  fs.invalidate_cache()
  after = {o: fs.info(f"{BUCKET}/models/{o}")["generation"] for o in _objects(fs, "models")}
  assert after == before


@pytest.fixture(scope="module")
def small_version(tmp_path_factory):
  """A verified local version of a small model, built once for the in-process tests."""
  variant = small_variant()
  folder = tmp_path_factory.mktemp("small")
  checkpoint = folder / "small.pth"
  torch_reference.save_official(torch_reference.reference_model(variant.architecture, 10, seed=8),
                                checkpoint)
  model = published_models.PublishedModel(variant, input_size=(8, 56, 56))
  return export_all.export_model(model, str(checkpoint), str(checkpoint), str(folder / "out"), 1,
                                 progress=lambda _: None)


def _publish(fs, root, published, overwrite=False, **kwargs):
  publisher = gcs.GcsPublisher(f"gs://{BUCKET}/{root}", fs=fs, sleep=lambda _: None, **kwargs)
  return publisher.publish_version(published.model.name, 1, published.savedmodel_dir,
                                   published.archive, published.manifest, overwrite=overwrite)


class _FailingCopies:
  """Wraps fs.copy to raise a permanent error on the `fail_at`-th call (1-based)."""

  def __init__(self, fs, fail_at):
    self.fs, self.fail_at, self.calls = fs, fail_at, 0
    self.copy = fs.copy

  def __call__(self, *args, **kwargs):
    self.calls += 1
    if self.calls == self.fail_at:
      raise PermissionError("injected failure")
    return self.copy(*args, **kwargs)


@pytest.mark.parametrize("fail_at", [1, 4])
def test_failure_mid_publish_leaves_nothing_visible(fs, small_version, monkeypatch, fail_at):
  root = f"fail-{fail_at}"
  failing = _FailingCopies(fs, fail_at)
  monkeypatch.setattr(fs, "copy", failing)
  with pytest.raises(gcs.PublishError, match="injected failure"):
    _publish(fs, root, small_version)
  assert failing.calls == fail_at
  fs.invalidate_cache()
  assert _objects(fs, root) == []


def test_failure_mid_upload_leaves_nothing_visible(fs, small_version, monkeypatch):
  calls = []
  put_file = fs.put_file

  def failing_put(local, url, **kwargs):
    calls.append(url)
    if len(calls) == 3:
      raise ConnectionResetError("injected: connection lost")
    return put_file(local, url, **kwargs)

  monkeypatch.setattr(fs, "put_file", failing_put)
  # Only one try: a reset connection is transient, and this test wants it to stay failed.
  with pytest.raises(gcs.PublishError, match="connection lost"):
    _publish(fs, "upload-fail", small_version, attempts=1)
  fs.invalidate_cache()
  assert _objects(fs, "upload-fail") == []


def test_transient_errors_are_retried(fs, small_version, monkeypatch):
  put_file, failures = fs.put_file, []

  def flaky_put(local, url, **kwargs):
    if len(failures) < 2:
      failures.append(url)
      raise gcs.gcsfs_retry.HttpError({"code": 503, "message": "injected: unavailable"})
    return put_file(local, url, **kwargs)

  monkeypatch.setattr(fs, "put_file", flaky_put)
  urls = _publish(fs, "flaky", small_version)
  assert len(failures) == 2
  fs.invalidate_cache()
  assert f"{small_version.model.name}/1/saved_model.pb" in _objects(fs, "flaky")
  assert urls[1] == f"gs://{BUCKET}/flaky/{small_version.model.name}/1.tar.gz"


def test_failed_overwrite_restores_the_old_version(fs, small_version, monkeypatch):
  _publish(fs, "overwrite", small_version)
  fs.invalidate_cache()
  before = {o: fs.info(f"{BUCKET}/overwrite/{o}")["md5Hash"] for o in _objects(fs, "overwrite")}
  with pytest.raises(gcs.PublishError, match="already exists"):
    _publish(fs, "overwrite", small_version)
  # Fail after the old version is set aside (one copy per old object) and two new objects.
  failing = _FailingCopies(fs, len(before) + 3)
  monkeypatch.setattr(fs, "copy", failing)
  with pytest.raises(gcs.PublishError, match="injected failure"):
    _publish(fs, "overwrite", small_version, overwrite=True)
  fs.invalidate_cache()
  after = {o: fs.info(f"{BUCKET}/overwrite/{o}")["md5Hash"] for o in _objects(fs, "overwrite")}
  assert after == before


def test_not_a_gcs_root_is_refused():
  with pytest.raises(gcs.PublishError, match="not a gs://bucket"):
    gcs.GcsPublisher("gs://")


def test_stale_staging_is_removed_and_fresh_staging_kept(fs):
  publisher = gcs.GcsPublisher(f"gs://{BUCKET}/stale", fs=fs)
  fs.pipe(f"{BUCKET}/stale/{gcs.STAGING_PREFIX}/m-1-abc/00000", b"left by a killed run")
  fs.pipe(f"{BUCKET}/stale/m/1.tar.gz", b"a published archive")
  assert publisher.remove_stale_staging() == []  # Just written: may be a run in progress.
  later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)
  lines = []
  removed = publisher.remove_stale_staging(now=later, progress=lines.append)
  assert removed == [f"gs://{BUCKET}/stale/{gcs.STAGING_PREFIX}/m-1-abc/00000"]
  assert lines and "left by interrupted runs" in lines[0]
  fs.invalidate_cache()
  assert _objects(fs, "stale") == ["m/1.tar.gz"]
