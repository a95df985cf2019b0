"""Small fake builds for the publishing tests: a few files per version, no TensorFlow, so
transactions, races and kills can be tried many times quickly."""

import json
import os
import time

from export.destinations import base
from export.destinations import local


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
