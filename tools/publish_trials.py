r"""SIGKILL trials of real publishes: after a kill at a random moment the destination holds no
version or the complete new one (and, with --overwrite, the complete old or the complete new one),
and the version can be published again.

  python tools/publish_trials.py --destination=local|gcs [--overwrite] [--trials=20] [--seed=0]

Each trial runs a child process that publishes one version of a small random-weight model through
the export pipeline (check, stale-staging sweep, convert, save, verify, archive, manifest,
commit, docs) and kills it with SIGKILL: two trials in three after a delay drawn uniformly over
its commit (from its "publishing" step to its "done", timed in a first whole run), every third
after a delay drawn uniformly over the whole run. With --overwrite, the first run publishes the
old version, and its files are committed again before each trial that replaced it. The parent then reads the destination as any
later run would, with the default stale_after_s (a day): the listing finishes or drops what the
killed run left (gs://: it rolls forward a commit whose lease ran out; the children's lease is
short, and the parent waits it out) and checks:
  - every listed version is whole: the manifest's archive_sha256 is the archive's, and the
    SavedModel files are exactly the archive's members, byte for byte;
  - the version is absent or built from the new checkpoint (or, with --overwrite, from the old
    or the new one), never neither;
  - the version can be taken again (begin succeeds, with stale_after_s=0 as if the day had
    passed: a killed build's claim blocks its version until then), so a rerun is not blocked.
The last trial's rerun publishes for real. gcs starts fake-gcs-server on 127.0.0.1. Prints the
outcome counts; exits 1 on the first violation.
"""

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections
import dataclasses
import hashlib
import io
import json
import random
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time

from absl import app
from absl import flags

from video_swin_hub.export.destinations import base
from video_swin_hub.hub_models import variants as variants_lib
from tests import publishing_fakes
# pylint: enable=g-import-not-at-top,wrong-import-position

_DESTINATION = flags.DEFINE_enum("destination", "local", ["local", "gcs"], "Where to publish.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Publish over a complete old version instead of a new one.")
_TRIALS = flags.DEFINE_integer("trials", 20, "Kills per run of the script.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
# Child mode (used by the parent): publish one version and exit.
_CHILD_ROOT = flags.DEFINE_string("child_root", None, "Child: the destination to publish into.")
_CHILD_CHECKPOINT = flags.DEFINE_string("child_checkpoint", None, "Child: the checkpoint.")
_CHILD_VERSION = flags.DEFINE_integer("child_version", 1, "Child: the version.")
_CHILD_OVERWRITE = flags.DEFINE_bool("child_overwrite", False, "Child: replace the version.")

BUCKET = "trials"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A narrow model, so that one whole export takes seconds.
_ARCH = variants_lib.Architecture(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4),
                                  window_size=(8, 7, 7))
_VARIANT = variants_lib.Variant(
    name="trial_small", architecture=_ARCH, num_classes=10, checkpoint_urls=(),
    pretrain_dataset=variants_lib.IMAGENET_1K, finetune_dataset=variants_lib.KINETICS_400,
    top1=0.0, top5=0.0, eval_views="")
_INPUT_SIZE = (8, 32, 32)
# The children's gs:// commit lease: short, so that the parent waits little for a killed commit's
# lease to run out before it reads.
_COMMIT_LEASE_S = 1.0


def _model():
  from video_swin_hub.export import published_models  # pylint: disable=g-import-not-at-top
  return published_models.PublishedModel(_VARIANT, input_size=_INPUT_SIZE)


def _destination(root: str, stale_after_s: float = base.DestinationOptions.stale_after_s
                 ) -> base.Destination:
  from video_swin_hub.export import destinations  # pylint: disable=g-import-not-at-top
  return destinations.open_destination(
      root, base.DestinationOptions(stale_after_s=stale_after_s, commit_lease_s=_COMMIT_LEASE_S))


def child_main() -> None:
  """Publishes one version the way export_all does (printing its steps), then writes the docs."""
  from video_swin_hub.export import pipeline  # pylint: disable=g-import-not-at-top
  destination = _destination(_CHILD_ROOT.value)
  model = _model()
  version = base.VersionId(model.name, _CHILD_VERSION.value)
  destination.check([version], overwrite=_CHILD_OVERWRITE.value)
  destination.remove_stale_staging(lambda _: None)
  checkpoint = pipeline.Checkpoint(_CHILD_CHECKPOINT.value, _CHILD_CHECKPOINT.value, "local file")
  pipeline.publish(model, checkpoint, destination, version.version,
                   overwrite=_CHILD_OVERWRITE.value,
                   progress=lambda step: print(step, flush=True))
  destination.write_docs(base.DocsOptions("trials"), lambda _: None)
  print("ok", flush=True)


def _ok(out: bytes) -> bool:
  return out.strip().endswith(b"\nok")


def _checkpoints(folder: str) -> dict:
  """Two random-weight checkpoints of the small model: {sha256: "old" | "new"}."""
  from tests import torch_reference  # pylint: disable=g-import-not-at-top
  found = {}
  for tag, seed in (("old", 1), ("new", 2)):
    path = os.path.join(folder, f"{tag}.pth")
    torch_reference.save_official(
        torch_reference.reference_model(_ARCH, _VARIANT.num_classes, seed=seed), path)
    with open(path, "rb") as f:
      found[hashlib.sha256(f.read()).hexdigest()] = (tag, path)
  return found


@dataclasses.dataclass
class _Reader:
  """Reads a version's files from the destination (local paths or gs:// objects)."""
  root: str
  fs: object = None

  def read(self, relative: str) -> bytes:
    if self.fs is None:
      with open(os.path.join(self.root, relative), "rb") as f:
        return f.read()
    self.fs.invalidate_cache()
    return self.fs.cat_file(f"{self.root}/{relative}")

  def files_below(self, relative: str) -> dict:
    if self.fs is None:
      top = os.path.join(self.root, relative)
      return {os.path.relpath(os.path.join(d, n), top).replace(os.sep, "/"):
              open(os.path.join(d, n), "rb").read()
              for d, _, names in os.walk(top) for n in names}
    self.fs.invalidate_cache()
    prefix = f"{self.root}/{relative}/"[len("gs://"):]
    return {path[len(prefix):]: self.fs.cat_file(path) for path in self.fs.find(prefix)}


def check_whole(destination: base.Destination, reader: _Reader, version: base.VersionId,
                tags: dict):
  """The tag of the complete version ("old"/"new") or None; raises AssertionError if a listed
  version is not whole."""
  listed = [m for m in destination.published()
            if (m["model"], m["version"]) == (version.name, version.version)]
  if not listed:
    return None
  manifest = listed[0]
  archive = reader.read(f"{version.name}/{version.version}.tar.gz")
  assert hashlib.sha256(archive).hexdigest() == manifest["archive_sha256"], "archive != manifest"
  with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
  assert reader.files_below(f"{version.name}/{version.version}") == members, \
      "SavedModel files differ from the archive"
  return tags[manifest["checkpoint_sha256"]][0]


def keep(reader: _Reader, version: base.VersionId, folder: str) -> None:
  """Copies a complete version into `folder` as the pipeline builds one: savedmodel/,
  archive.tar.gz, manifest.json."""
  relative = f"{version.name}/{version.version}"
  for name, data in reader.files_below(relative).items():
    path = os.path.join(folder, "savedmodel", *name.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(data)
  for name, target in ((f"{relative}.tar.gz", "archive.tar.gz"),
                       (f"{relative}.manifest.json", "manifest.json")):
    with open(os.path.join(folder, target), "wb") as f:
      f.write(reader.read(name))


def parent_main() -> None:
  work = tempfile.mkdtemp(prefix="publish-trials-")
  if _DESTINATION.value == "gcs":
    with publishing_fakes.fake_gcs_server(BUCKET):
      from video_swin_hub.export.destinations import gcs  # pylint: disable=g-import-not-at-top
      root = f"gs://{BUCKET}/trials"
      trials(work, root, _Reader(root, gcs.filesystem()))
  else:
    root = os.path.join(work, "out")
    trials(work, root, _Reader(root))


def trials(work: str, root: str, reader: _Reader) -> None:
  """Runs the trials against `root`, read through `reader`; exits 1 on the first violation."""
  tags = _checkpoints(work)
  path_of = {tag: path for tag, path in tags.values()}
  destination = _destination(root)
  rng = random.Random(_SEED.value)
  allowed = {"old", "new"} if _OVERWRITE.value else {None, "new"}
  counts = collections.Counter()

  def run_child(version: int, tag: str) -> subprocess.Popen:
    """The child's stdout (its steps) is a pipe; its stderr goes to a file, which `finish`
    reads, so that the parent can read the steps as they come."""
    error_file = tempfile.TemporaryFile()
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), f"--child_root={root}",
         f"--child_checkpoint={path_of[tag]}", f"--child_version={version}",
         f"--child_overwrite={_OVERWRITE.value}"],
        cwd=_REPO, stdout=subprocess.PIPE, stderr=error_file, env=os.environ)
    child.error_file = error_file
    return child

  def finish(child: subprocess.Popen):
    """(stdout, the end of stderr) once the child has ended."""
    out = child.communicate()[0]
    child.error_file.seek(0)
    err = child.error_file.read()[-2000:].decode(errors="replace")
    child.error_file.close()
    return out, err

  def put_old_back(version_id: base.VersionId) -> None:
    """Publishes the kept old version again (its files, not a new build: that takes seconds)."""
    if not _OVERWRITE.value or check_whole(destination, reader, version_id, tags) == "old":
      return
    with _destination(root, stale_after_s=0).begin(version_id, overwrite=True) as transaction:
      shutil.copytree(kept, transaction.work_dir, dirs_exist_ok=True)
      with open(os.path.join(transaction.work_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
      transaction.commit(base.BuiltVersion(
          version_id, os.path.join(transaction.work_dir, "savedmodel"),
          os.path.join(transaction.work_dir, "archive.tar.gz"),
          os.path.join(transaction.work_dir, "manifest.json"), manifest))

  # The timing run (and, with --overwrite, the old version the trials replace).
  timing_id = base.VersionId(_model().name, 1 if _OVERWRITE.value else 1000)
  child = run_child(timing_id.version, "old" if _OVERWRITE.value else "new")
  started = time.monotonic()
  steps = {}
  for line in child.stdout:
    steps[line.decode().strip()] = time.monotonic() - started
  err = finish(child)[1]
  assert "ok" in steps, err
  duration, commit_s = steps["done"], steps["done"] - steps["publishing"]
  print(f"one whole run: {duration:.1f} s, its commit {commit_s:.2f} s", flush=True)
  if _OVERWRITE.value:
    kept = os.path.join(work, "kept")
    keep(reader, timing_id, kept)
  for trial in range(1, _TRIALS.value + 1):
    version_id = base.VersionId(_model().name, 1 if _OVERWRITE.value else trial)
    put_old_back(version_id)
    child = run_child(version_id.version, "new")
    if trial % 3:
      for line in child.stdout:
        if line.strip() in (b"publishing", b"ok"):
          break
      where = "into its commit"
      delay = rng.uniform(0, commit_s)
    else:
      where = "into the run"
      delay = rng.uniform(0, duration)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    out, err = finish(child)
    assert child.returncode == -signal.SIGKILL or _ok(out), err
    time.sleep(_COMMIT_LEASE_S)  # a killed commit is rolled forward once its lease runs out
    tag = check_whole(destination, reader, version_id, tags)
    counts[tag or "none"] += 1
    print(f"trial {trial}: killed {delay:.2f} s {where} -> {tag or 'no version'}", flush=True)
    if tag not in allowed:
      sys.exit(f"error: trial {trial}: found {tag or 'no version'}, allowed {allowed}")
    with _destination(root, stale_after_s=0).begin(version_id, overwrite=True):
      pass  # the rerun is not blocked by what the kill left
  # The rerun of the last killed version publishes it for real.
  out, err = finish(run_child(version_id.version, "new"))
  if not _OVERWRITE.value and "already exists" in err:
    pass  # the last kill came after its commit: the version is already complete
  else:
    assert _ok(out), err
  print(f"{_DESTINATION.value} overwrite={_OVERWRITE.value}: {_TRIALS.value} kills: "
        f"{dict(counts)}; rerun ok", flush=True)


def main(argv):
  del argv
  if _CHILD_ROOT.value:
    child_main()
  else:
    parent_main()


if __name__ == "__main__":
  app.run(main)
