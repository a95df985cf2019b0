"""A local (or shared network) folder as a publishing destination.

Layout under the root, per version N of model NAME:
  NAME/N/               the SavedModel (what users load),
  NAME/N.tar.gz         the same files at the archive root,
  NAME/N.manifest.json  the manifest: written last and removed first, so a version is complete
                        exactly when its manifest exists;
  .locks/NAME/N.lock    the version's lock (flock), recording the holder's host and pid;
  .staging/NAME/N/XXXX/ the folder a transaction builds in.

Concurrency: a transaction holds the version's lock from its immutability check to its last
rename; a second publisher of the same version is refused with the holder's name. The kernel drops
a flock when its process dies, so "the lock is free" proves a staging folder's owner is gone, on
this host or (through the NFS lock manager) another.

Crash consistency: the commit first writes a journal of renames into the staging folder, then does
them (old manifest aside, old SavedModel aside, new SavedModel, archive, new manifest). Whoever next
takes the lock (a later publish, the listing, the stale-staging sweep) finishes a journal it finds
and deletes the folder, so a SIGKILL leaves no version, the complete old one or, once the journal
exists, the complete new one.
"""

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from typing import Iterator, List, Optional, Sequence, Tuple

from .. import files
from . import base
from ..docs import tfhub

LOCKS_DIR = ".locks"
STAGING_DIR = ".staging"
_JOURNAL = "commit.json"
_DOCS_LOCK = "docs"


def from_url(output_dir: str, options: base.DestinationOptions) -> "LocalDestination":
  del options  # locks prove owners gone; no age is needed here
  return LocalDestination(output_dir)


class _Lock:
  """An exclusive, non-blocking flock on one lock file, which records its holder."""

  def __init__(self, path: str):
    self.path = path
    self._fd: Optional[int] = None

  def try_acquire(self) -> bool:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return False
    holder = f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%H:%M:%S')}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode("utf-8"), 0)
    self._fd = fd
    return True

  def holder(self) -> str:
    try:
      with open(self.path, encoding="utf-8", errors="replace") as f:
        return f.read(200).strip() or "another process"
    except OSError:
      return "another process"

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing drops the flock
      self._fd = None


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    os.unlink(path)


def _roll_forward(work_dir: str) -> bool:
  """Finishes the commit journaled in `work_dir`, if any; returns whether there was a journal.

  The journal lists (new file in work_dir, final path) in order, the manifest last. Each new file
  still in work_dir is not placed yet, so re-running a finished or half-finished journal is safe:
  while the new manifest is not placed, the old manifest is moved aside first (the version reads
  as incomplete, never as complete with mixed files); an old SavedModel folder is moved aside
  before the new one takes its place; files are replaced by rename.
  """
  journal = os.path.join(work_dir, _JOURNAL)
  try:
    with open(journal, encoding="utf-8") as f:
      places = json.load(f)["places"]
  except FileNotFoundError:
    return False
  new_manifest, final_manifest = places[-1]
  if os.path.lexists(new_manifest) and os.path.lexists(final_manifest):
    os.replace(final_manifest, os.path.join(work_dir, "replaced-manifest"))
  for index, (source, target) in enumerate(places):
    if not os.path.lexists(source):
      continue
    if os.path.isdir(source) and os.path.lexists(target):
      aside = os.path.join(work_dir, f"replaced-{index}")
      _remove(aside)
      os.replace(target, aside)  # a folder cannot replace a non-empty one
    os.replace(source, target)
  return True


class LocalTransaction(base.Transaction):
  """Holds one version's lock; `work_dir` is on the destination's file system."""

  def __init__(self, destination: "LocalDestination", version: base.VersionId, lock: _Lock,
               work_dir: str):
    self._destination = destination
    self._version = version
    self._lock = lock
    self.work_dir = work_dir

  def commit(self, built: base.BuiltVersion) -> str:
    savedmodel, archive, manifest = self._destination.paths(self._version)
    os.makedirs(os.path.dirname(savedmodel), exist_ok=True)
    places = [(built.savedmodel_dir, savedmodel), (built.archive, archive),
              (built.manifest_path, manifest)]
    files.write_text_atomically(os.path.join(self.work_dir, _JOURNAL),
                                json.dumps({"places": places}))
    _roll_forward(self.work_dir)
    return self._destination.handle(self._version)

  def abort(self) -> None:
    if self._lock is None:
      return
    try:
      # Also finishes a commit interrupted by an exception after its journal was written.
      _roll_forward(self.work_dir)
    finally:
      shutil.rmtree(self.work_dir, ignore_errors=True)
      self._destination.remove_empty_staging(self._version)
      self._lock.release()
      self._lock = None


class LocalDestination(base.Destination):
  """Publishes into the folder `root` (created when the first version is published)."""

  def __init__(self, root: str):
    # Absolute, so journals stay valid for a recovery run from another working directory.
    self.root = os.path.abspath(root)

  def paths(self, version: base.VersionId) -> Tuple[str, str, str]:
    """(SavedModel folder, archive, manifest) of `version`."""
    base_path = os.path.join(self.root, version.name, str(version.version))
    return base_path, f"{base_path}.tar.gz", f"{base_path}.manifest.json"

  def handle(self, version: base.VersionId) -> str:
    return os.path.abspath(self.paths(version)[0])

  def _lock(self, name: str, version: int) -> _Lock:
    return _Lock(os.path.join(self.root, LOCKS_DIR, name, f"{version}.lock"))

  def _staging(self, version: base.VersionId) -> str:
    return os.path.join(self.root, STAGING_DIR, version.name, str(version.version))

  def is_published(self, version: base.VersionId) -> bool:
    return os.path.exists(self.paths(version)[2])

  def check(self, versions: Sequence[base.VersionId], overwrite: bool) -> None:
    existing = self.root
    while existing and not os.path.exists(existing):
      existing = os.path.dirname(existing)
    existing = existing or "."
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
      raise base.PublishError(f"{existing} is not a writable folder (for --output_dir={self.root})")
    if overwrite:
      return
    for version in versions:
      if self.is_published(version):
        raise base.AlreadyPublishedError(
            f"{self.paths(version)[2]} already exists: versions are immutable (use --overwrite)")

  def begin(self, version: base.VersionId, overwrite: bool) -> LocalTransaction:
    lock = self._lock(version.name, version.version)
    if not lock.try_acquire():
      raise base.VersionBusyError(
          f"{version} is being published by {lock.holder()} ({lock.path}); try again later")
    try:
      self._recover(version)
      if not overwrite and self.is_published(version):
        raise base.AlreadyPublishedError(
            f"{self.paths(version)[2]} already exists: versions are immutable (use --overwrite)")
      staging = self._staging(version)
      os.makedirs(staging, exist_ok=True)
      work_dir = tempfile.mkdtemp(dir=staging)
    except BaseException:
      lock.release()
      raise
    return LocalTransaction(self, version, lock, work_dir)

  def _recover(self, version: base.VersionId,
               progress: base.Progress = lambda _: None) -> List[str]:
    """With the version's lock held: finishes journaled commits and deletes staging folders."""
    staging = self._staging(version)
    removed = []
    for entry in sorted(os.listdir(staging)) if os.path.isdir(staging) else []:
      work_dir = os.path.join(staging, entry)
      if _roll_forward(work_dir):
        progress(f"finished the interrupted publish of {version} from {work_dir}")
      shutil.rmtree(work_dir, ignore_errors=True)
      removed.append(work_dir)
    self.remove_empty_staging(version)
    return removed

  def remove_empty_staging(self, version: base.VersionId) -> None:
    """Removes the version's empty staging folder; only its lock holders create inside it."""
    with contextlib.suppress(OSError):
      os.rmdir(self._staging(version))

  def _staged_versions(self) -> Iterator[base.VersionId]:
    staging_root = os.path.join(self.root, STAGING_DIR)
    for name in sorted(os.listdir(staging_root)) if os.path.isdir(staging_root) else []:
      for version in sorted(os.listdir(os.path.join(staging_root, name))):
        if version.isdigit():
          yield base.VersionId(name, int(version))

  def remove_stale_staging(self, progress: base.Progress = lambda _: None) -> List[str]:
    removed = []
    for version in self._staged_versions():
      lock = self._lock(version.name, version.version)
      if not lock.try_acquire():
        continue  # a live publisher owns it
      try:
        for path in self._recover(version, progress):
          progress(f"removed {path}, left by an interrupted export")
          removed.append(path)
      finally:
        lock.release()
    return removed

  def published(self) -> List[base.Manifest]:
    self.remove_stale_staging()
    manifests = []
    if not os.path.isdir(self.root):
      return manifests
    for name in sorted(os.listdir(self.root)):
      folder = os.path.join(self.root, name)
      if name.startswith(".") or not os.path.isdir(folder):
        continue
      for entry in os.listdir(folder):
        stem = entry[:-len(".manifest.json")]
        if entry.endswith(".manifest.json") and stem.isdigit():
          with open(os.path.join(folder, entry), encoding="utf-8") as f:
            manifests.append(json.load(f))
    return sorted(manifests, key=lambda m: (m["model"], m["version"]))

  def write_docs(self, options: base.DocsOptions, progress: base.Progress) -> List[str]:
    # One docs writer at a time: each lists what is published then writes, so the last writer's
    # collection includes every version committed before it listed.
    lock = _Lock(os.path.join(self.root, LOCKS_DIR, f"{_DOCS_LOCK}.lock"))
    while not lock.try_acquire():
      time.sleep(0.1)
    try:
      versions = tfhub.versions_of(self.published())
      written = tfhub.write_tree(self.root, versions, options.publisher,
                                 options.asset_base_url or tfhub.PLACEHOLDER_ASSET_BASE_URL) if versions else []
    finally:
      lock.release()
    progress(f"wrote {len(written)} docs under {os.path.join(self.root, tfhub.DOCS_DIR)}")
    return written
