"""Publishing exported versions and docs to Google Cloud Storage (`gs://bucket/prefix`) via gcsfs.

A version is built and verified locally first (see export_all), then published here:

1. every file is uploaded under `<root>/.staging/<model>-<version>-<random>/`;
2. each uploaded object's size and MD5 are compared with the local file;
3. the objects are copied into place: the archive, the manifest, then the SavedModel with its
   `saved_model.pb` last, so a reader who can load the version sees all of it;
4. the staging prefix is deleted.

A version is visible only after step 3; if step 3 fails, the objects copied so far are deleted (and
a version being replaced with --overwrite is restored), so a half-published version never stays.
A killed run can leave step 1's objects behind; `remove_stale_staging` deletes those older than a
day.
Each storage call is retried with backoff on errors gcsfs calls transient (5xx, 429, timeouts).

`STORAGE_EMULATOR_HOST=http://HOST:PORT` points gcsfs at a local emulator; anonymous access is
then used. Otherwise gcsfs finds Google credentials the usual way.
"""

import base64
import hashlib
import os

# gcsfs's experimental hierarchical-namespace probe stalls every call against an emulator (and is
# not needed for publishing); it reads this before it is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

# pylint: disable=g-import-not-at-top,wrong-import-position
import datetime
import posixpath
import time
from typing import Callable, List, Optional, Sequence, Tuple
import uuid

import gcsfs
from gcsfs import retry as gcsfs_retry
# pylint: enable=g-import-not-at-top,wrong-import-position

SCHEME = "gs://"
STAGING_PREFIX = ".staging"
# Staged uploads older than this belong to a publisher that was killed (a version uploads in
# minutes); younger ones may belong to a run in progress and are left alone.
STALE_STAGING_AGE = datetime.timedelta(days=1)


class PublishError(RuntimeError):
  """Publishing failed; the message names the object and the reason."""


def is_gcs(path: str) -> bool:
  return path.startswith(SCHEME)


def filesystem() -> gcsfs.GCSFileSystem:
  """A gcsfs file system: anonymous against an emulator, default credentials otherwise."""
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    return gcsfs.GCSFileSystem(token="anon")
  return gcsfs.GCSFileSystem()


def _md5_base64(path: str) -> str:
  """The MD5 of a local file as GCS reports it (`md5Hash`: base64 of the digest)."""
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return base64.b64encode(digest.digest()).decode("ascii")


def _updated(info: dict) -> datetime.datetime:
  """When an object was last written, from gcsfs's listing details."""
  updated = info.get("updated") or info.get("timeCreated")
  if isinstance(updated, datetime.datetime):
    return updated
  return datetime.datetime.fromisoformat(updated.replace("Z", "+00:00"))


def _local_files(local_dir: str) -> List[str]:
  """Relative POSIX paths of the files below `local_dir`, sorted."""
  found = []
  for root, _, files in os.walk(local_dir):
    for name in files:
      found.append(os.path.relpath(os.path.join(root, name), local_dir).replace(os.sep, "/"))
  return sorted(found)


class GcsPublisher:
  """Publishes versions under one `gs://bucket/prefix` root.

  Args:
    root: `gs://bucket[/prefix]`.
    fs: the gcsfs file system (default: `filesystem()`).
    attempts: tries per storage call on transient errors.
    backoff_s: wait before the second try; doubles after each failed try.
    sleep: how to wait (tests pass a no-op).
  """

  def __init__(self, root: str, fs: Optional[gcsfs.GCSFileSystem] = None, attempts: int = 5,
               backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep):
    if not is_gcs(root) or not root[len(SCHEME):].strip("/"):
      raise PublishError(f"{root!r} is not a gs://bucket[/prefix] path")
    self.root = root.rstrip("/")
    self.fs = fs if fs is not None else filesystem()
    self.attempts = attempts
    self.backoff_s = backoff_s
    self.sleep = sleep

  def url(self, relative: str) -> str:
    return f"{self.root}/{relative}"

  def _call(self, what: str, fn, *args, **kwargs):
    """Runs a storage call, retrying transient errors; raises PublishError naming `what`."""
    delay = self.backoff_s
    for attempt in range(1, self.attempts + 1):
      try:
        return fn(*args, **kwargs)
      except Exception as error:  # pylint: disable=broad-except
        if attempt == self.attempts or not gcsfs_retry.is_retriable(error):
          raise PublishError(f"{what} failed: {error!r}") from error
        self.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")

  def _exists(self, url: str) -> bool:
    return self._call(f"checking {url}", self.fs.exists, url)

  def _objects(self, prefix: str) -> List[str]:
    """URLs of every object below `prefix` (a gs:// URL ending in '/')."""
    return [SCHEME + path for path in self._call(f"listing {prefix}", self.fs.find, prefix)]

  def version_urls(self, name: str, version: int) -> List[str]:
    """[SavedModel prefix, archive, manifest] of one version."""
    base = self.url(f"{name}/{version}")
    return [base, f"{base}.tar.gz", f"{base}.manifest.json"]

  def existing(self, name: str, version: int) -> List[str]:
    """URLs of the objects of this version that exist already."""
    savedmodel, archive, manifest = self.version_urls(name, version)
    return ([url for url in (archive, manifest) if self._exists(url)]
            + self._objects(savedmodel + "/"))

  def check_not_published(self, name: str, version: int) -> None:
    """Raises PublishError if any part of this version exists: versions are immutable."""
    found = self.existing(name, version)
    if found:
      raise PublishError(f"{found[0]} already exists: versions are immutable (use --overwrite)")

  def publish_version(self, name: str, version: int, savedmodel_dir: str, archive: str,
                      manifest: str, overwrite: bool = False,
                      progress: Callable[[str], None] = lambda _: None) -> List[str]:
    """Uploads one verified local version and moves it into place; returns its URLs.

    Raises:
      PublishError: the version exists (without `overwrite`) or a storage call failed; in both
        cases nothing of the new version is left visible.
    """
    if not overwrite:
      self.check_not_published(name, version)
    savedmodel_url, archive_url, manifest_url = self.version_urls(name, version)
    # (local file, final URL) in the order they become visible: saved_model.pb last.
    members = [(os.path.join(savedmodel_dir, *rel.split("/")), f"{savedmodel_url}/{rel}")
               for rel in _local_files(savedmodel_dir)]
    members.sort(key=lambda member: member[1].endswith("/saved_model.pb"))
    members = [(archive, archive_url), (manifest, manifest_url)] + members

    staging = self.url(f"{STAGING_PREFIX}/{name}-{version}-{uuid.uuid4().hex[:12]}")
    staged = [(local, f"{staging}/{index:05d}") for index, (local, _) in enumerate(members)]
    set_aside, copied = [], []  # (kept URL, original URL); final URLs written so far.
    try:
      progress("uploading")
      for local, url in staged:
        self._call(f"uploading {local} to {url}", self.fs.put_file, local, url)
      self._check_uploads(staged)
      progress("publishing")
      if overwrite:
        self._set_aside(self.existing(name, version), f"{staging}/old", set_aside)
      for (_, source), (_, target) in zip(staged, members):
        self._call(f"copying {source} to {target}", self.fs.copy, source, target)
        copied.append(target)
    except BaseException:
      for target in reversed(copied):
        self._remove_quietly(target)
      for kept, original in set_aside:
        self._call(f"restoring {original}", self.fs.copy, kept, original)
      raise
    finally:
      self._remove_quietly(staging)
    return [savedmodel_url, archive_url, manifest_url]

  def _check_uploads(self, staged: Sequence[Tuple[str, str]]) -> None:
    for local, url in staged:
      info = self._call(f"reading {url}", self.fs.info, url)
      size, md5 = os.path.getsize(local), _md5_base64(local)
      if info.get("size") != size or info.get("md5Hash", md5) != md5:
        raise PublishError(f"{url} does not match {local} after upload "
                           f"(size {info.get('size')} vs {size}, md5 {info.get('md5Hash')} vs "
                           f"{md5})")

  def _set_aside(self, originals: Sequence[str], trash: str,
                 moved: List[Tuple[str, str]]) -> None:
    """Moves `originals` under `trash`, appending (trash URL, original URL) to `moved` as it goes
    so that a failure half-way can still be undone."""
    for original in originals:
      kept = f"{trash}/{len(moved):05d}"
      self._call(f"copying {original}", self.fs.copy, original, kept)
      self._call(f"removing {original}", self.fs.rm, original)
      moved.append((kept, original))

  def _remove_quietly(self, url: str) -> None:
    """Best-effort delete of an object or prefix (clean-up must not hide the first error)."""
    try:
      if self.fs.exists(url) or self.fs.find(url):
        self.fs.rm(url, recursive=True)
    except Exception:  # pylint: disable=broad-except
      pass

  def remove_stale_staging(self, now: Optional[datetime.datetime] = None,
                           progress: Callable[[str], None] = lambda _: None) -> List[str]:
    """Deletes staged objects older than STALE_STAGING_AGE (left by killed runs); returns them."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    prefix = self.url(STAGING_PREFIX) + "/"
    found = self._call(f"listing {prefix}", self.fs.find, prefix, detail=True)
    stale = [SCHEME + path for path, info in found.items()
             if now - _updated(info) > STALE_STAGING_AGE]
    for url in stale:
      self._call(f"removing {url}", self.fs.rm, url)
    if stale:
      progress(f"removed {len(stale)} staged objects under {prefix}, left by interrupted runs")
    return stale

  def upload_tree(self, local_dir: str, relative_root: str) -> List[str]:
    """Uploads every file below `local_dir` to `<root>/<relative_root>/...` (docs: each object
    write is atomic, and docs are regenerated whole); returns the URLs."""
    urls = []
    for rel in _local_files(local_dir):
      url = self.url(posixpath.join(relative_root, rel))
      self._call(f"uploading {url}", self.fs.put_file,
                 os.path.join(local_dir, *rel.split("/")), url)
      urls.append(url)
    return urls
