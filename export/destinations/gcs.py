"""Google Cloud Storage (`gs://bucket/prefix`) as a publishing destination, through gcsfs.

Layout under the root, per version N of model NAME:
  NAME/N/...              the SavedModel objects (what users load),
  NAME/N.tar.gz           the archive,
  NAME/N.manifest.json    the completion object: written last, deleted first, so readers (the
                          "already published" check, the listing, the docs) trust a version
                          exactly when it exists;
  .claims/NAME/N.json     the claim: who publishes the version now, and the state of its commit;
  .staging/NAME-N-RUN/... the uploaded files of one run.

Concurrency: the claim is written with a generation precondition: `ifGenerationMatch=0` when
there is none, the observed generation when taking over a finished or abandoned one, and every
later update of it by its owner names the generation it last wrote. Of several concurrent writers
exactly one wins; the others get HTTP 412 and end with one error line. The claim is written as a
multipart upload, the kind of request an emulator (fake-gcs-server) and GCS both check.

A commit: upload everything to staging, compare each object's size and MD5 (or CRC32C; no hash
from the server is a failure), record "committing" with the staging prefix in the claim, delete
the old completion object, copy the new objects into place (the manifest last), delete objects of
the old version that the new one does not have, mark the claim "done", delete staging. A failure
before "committing" leaves the old version untouched. A failure after it is rolled back: the old
objects, copied aside before anything changed, are put back (every restore is tried; the first
error is reported). A killed run's claim stays "building" or "committing"; once older than
`stale_after_s` it counts as abandoned: "committing" is rolled forward from its staging (the
version then is the complete new one), "building" only has its staging deleted.

`STORAGE_EMULATOR_HOST=http://HOST:PORT` points gcsfs at a local emulator with anonymous access;
otherwise gcsfs finds Google credentials the usual way.
"""

import base64
import datetime
import hashlib
import json
import os

# gcsfs's experimental hierarchical-namespace probe stalls every call against an emulator (and is
# not needed for publishing); it reads this before it is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

# pylint: disable=g-import-not-at-top,wrong-import-position
import posixpath
import shutil
import socket
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
import urllib.parse
import uuid

import gcsfs
import google_crc32c
from gcsfs import retry as gcsfs_retry

from export.destinations import base
from export.docs import tfhub
# pylint: enable=g-import-not-at-top,wrong-import-position

SCHEME = "gs://"
STAGING_PREFIX = ".staging"
CLAIMS_PREFIX = ".claims"
_BOUNDARY = "==claim=="


def from_url(output_dir: str, options: base.DestinationOptions) -> "GcsDestination":
  return GcsDestination(output_dir, stale_after_s=options.stale_after_s)


def filesystem() -> gcsfs.GCSFileSystem:
  """A gcsfs file system: anonymous against an emulator, default credentials otherwise."""
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    return gcsfs.GCSFileSystem(token="anon")
  return gcsfs.GCSFileSystem()


def _digests(path: str) -> Tuple[str, str]:
  """(MD5, CRC32C) of a local file as GCS reports them: base64 of the digest."""
  md5, crc = hashlib.md5(), google_crc32c.Checksum()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      md5.update(block)
      crc.update(block)
  return (base64.b64encode(md5.digest()).decode("ascii"),
          base64.b64encode(crc.digest()).decode("ascii"))


def _local_files(local_dir: str) -> List[str]:
  """Relative POSIX paths of the files below `local_dir`, sorted."""
  found = []
  for root, _, names in os.walk(local_dir):
    for name in names:
      found.append(os.path.relpath(os.path.join(root, name), local_dir).replace(os.sep, "/"))
  return sorted(found)


def _now() -> float:
  return time.time()


class _ClaimLost(base.PublishError):
  """The claim's generation changed under its owner: another publisher took the version."""


class GcsTransaction(base.Transaction):
  """Owns one version's claim (at `generation`); builds in a local temporary `work_dir`."""

  def __init__(self, destination: "GcsDestination", version: base.VersionId, generation: int,
               overwrite: bool):
    self._destination = destination
    self._version = version
    self._generation: Optional[int] = generation
    self._overwrite = overwrite
    self._run = uuid.uuid4().hex[:12]
    self.staging = destination.url(f"{STAGING_PREFIX}/{version.name}-{version.version}-{self._run}")
    self.work_dir = tempfile.mkdtemp(prefix="video-swin-gcs-")

  def _claim(self, state: str, **fields) -> None:
    self._generation = self._destination.write_claim(
        self._version, self._generation, {"state": state, "staging": self.staging, **fields})

  def commit(self, built: base.BuiltVersion) -> str:
    d = self._destination
    savedmodel_url, archive_url, manifest_url = d.version_urls(self._version)
    # (local file, final URL): the SavedModel, then the archive, the manifest last.
    members = [(os.path.join(built.savedmodel_dir, *rel.split("/")), f"{savedmodel_url}/{rel}")
               for rel in _local_files(built.savedmodel_dir)]
    members += [(built.archive, archive_url), (built.manifest_path, manifest_url)]
    places = [(f"{self.staging}/new/{index:05d}", final)
              for index, (_, final) in enumerate(members)]
    for (local, _), (staged, _) in zip(members, places):
      d.call(f"uploading {local} to {staged}", d.fs.put_file, local, staged)
    for (local, _), (staged, _) in zip(members, places):
      d.check_upload(local, staged)
    old = d.objects_of(self._version)
    kept = [(url, f"{self.staging}/old/{index:05d}") for index, url in enumerate(old)]
    for url, aside in kept:
      d.call(f"copying {url} aside", d.fs.copy, url, aside)
    self._claim("committing", places=places, old=kept)
    try:
      d.roll_forward(places, old)
    except BaseException as error:
      d.roll_back(places, kept, error)
      self._claim("done" if kept else "free")
      raise
    self._claim("done")
    return d.handle(self._version)

  def abort(self) -> None:
    shutil.rmtree(self.work_dir, ignore_errors=True)
    if self._generation is None:
      return
    d = self._destination
    d.remove_quietly(self.staging)
    try:
      state = d.read_claim(self._version)
      if state and state[0].get("state") in ("building", "committing") \
          and state[1] == self._generation:
        self._claim("done" if d.is_published(self._version) else "free")
    except base.PublishError:
      pass  # an abandoned claim is taken over once stale
    self._generation = None


class GcsDestination(base.Destination):
  """Publishes under one `gs://bucket[/prefix]` root.

  Args:
    root: `gs://bucket[/prefix]`.
    fs: the gcsfs file system (default: `filesystem()`).
    stale_after_s: claims of unfinished publishes older than this are abandoned.
    attempts: tries per storage call on transient errors.
    backoff_s: wait before the second try; doubles after each failed try.
    sleep: how to wait (tests pass a no-op).
  """

  def __init__(self, root: str, fs: Optional[gcsfs.GCSFileSystem] = None,
               stale_after_s: float = base.DestinationOptions.stale_after_s, attempts: int = 5,
               backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep):
    if not root.startswith(SCHEME) or not root[len(SCHEME):].strip("/"):
      raise base.PublishError(f"{root!r} is not a gs://bucket[/prefix] path")
    self.root = root.rstrip("/")
    self.fs = fs if fs is not None else filesystem()
    self.stale_after_s = stale_after_s
    self.attempts = attempts
    self.backoff_s = backoff_s
    self.sleep = sleep

  # Storage calls.

  def url(self, relative: str) -> str:
    return f"{self.root}/{relative}"

  def call(self, what: str, fn, *args, **kwargs):
    """Runs a storage call, retrying transient errors; raises PublishError naming `what`."""
    delay = self.backoff_s
    for attempt in range(1, self.attempts + 1):
      try:
        return fn(*args, **kwargs)
      except FileExistsError:
        raise
      except Exception as error:  # pylint: disable=broad-except
        if attempt == self.attempts or not gcsfs_retry.is_retriable(error):
          raise base.PublishError(f"{what} failed: {error!r}") from error
        self.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")

  def _exists(self, url: str) -> bool:
    self.fs.invalidate_cache()
    return self.call(f"checking {url}", self.fs.exists, url)

  def _objects(self, prefix: str) -> List[str]:
    """URLs of every object below `prefix` (a gs:// URL ending in '/')."""
    self.fs.invalidate_cache()
    return [SCHEME + path for path in self.call(f"listing {prefix}", self.fs.find, prefix)]

  def remove_quietly(self, url: str) -> None:
    """Best-effort delete of an object or prefix (clean-up must not hide the first error)."""
    try:
      self.fs.invalidate_cache()
      if self.fs.exists(url) or self.fs.find(url):
        self.fs.rm(url, recursive=True)
    except Exception:  # pylint: disable=broad-except
      pass

  def check_upload(self, local: str, url: str) -> None:
    """Raises PublishError unless `url` has `local`'s size and MD5 (or CRC32C)."""
    info = self.call(f"reading {url}", self.fs.info, url)
    size = os.path.getsize(local)
    md5, crc32c = _digests(local)
    if info.get("md5Hash"):
      ok, what = info["md5Hash"] == md5, f"md5 {info['md5Hash']} vs {md5}"
    elif info.get("crc32c"):
      ok, what = info["crc32c"] == crc32c, f"crc32c {info['crc32c']} vs {crc32c}"
    else:
      raise base.PublishError(f"{url}: the server returned no md5Hash or crc32c to check the "
                              "upload against")
    if int(info.get("size", -1)) != size or not ok:
      raise base.PublishError(f"{url} does not match {local} after upload "
                              f"(size {info.get('size')} vs {size}, {what})")

  # Claims.

  def _claim_url(self, version: base.VersionId) -> str:
    return self.url(f"{CLAIMS_PREFIX}/{version.name}/{version.version}.json")

  def read_claim(self, version: base.VersionId) -> Optional[Tuple[Dict[str, Any], int]]:
    """(content, generation) of the version's claim, or None."""
    url = self._claim_url(version)
    self.fs.invalidate_cache()
    try:
      info = self.fs.info(url)
      content = json.loads(self.fs.cat_file(url))
    except FileNotFoundError:
      return None
    except Exception as error:  # pylint: disable=broad-except
      raise base.PublishError(f"reading {url} failed: {error!r}") from error
    return content, int(info["generation"])

  def write_claim(self, version: base.VersionId, generation: Optional[int],
                  content: Dict[str, Any]) -> int:
    """Writes the claim if its generation is `generation` (0 or None: if it does not exist);
    returns the new generation.

    Raises:
      _ClaimLost: the precondition failed (someone else wrote the claim).
    """
    url = self._claim_url(version)
    bucket, key, _ = self.fs.split_path(url)
    record = dict(content, owner=f"host {socket.gethostname()} pid {os.getpid()}",
                  time=_now())
    body = (f"--{_BOUNDARY}\nContent-Type: application/json; charset=UTF-8\n\n"
            + json.dumps({"name": key}) + f"\n--{_BOUNDARY}\nContent-Type: application/json\n\n"
            + json.dumps(record) + f"\n--{_BOUNDARY}--").encode("utf-8")
    try:
      answer = self.call(
          f"claiming {url}", self.fs.call, "POST",
          f"{self.fs._location}/upload/storage/v1/b/{urllib.parse.quote(bucket)}/o",  # pylint: disable=protected-access
          uploadType="multipart", ifGenerationMatch=str(generation or 0),
          headers={"Content-Type": f'multipart/related; boundary="{_BOUNDARY}"'},
          data=body, json_out=True)
    except FileExistsError:  # gcsfs's name for HTTP 412
      raise _ClaimLost(f"{version} was claimed by another publisher ({url})") from None
    return int(answer["generation"])

  def _is_stale(self, claim: Dict[str, Any]) -> bool:
    return _now() - float(claim.get("time", 0)) > self.stale_after_s

  # The version's objects.

  def version_urls(self, version: base.VersionId) -> List[str]:
    """[SavedModel prefix, archive, manifest] of one version."""
    base_url = self.url(f"{version.name}/{version.version}")
    return [base_url, f"{base_url}.tar.gz", f"{base_url}.manifest.json"]

  def handle(self, version: base.VersionId) -> str:
    return self.version_urls(version)[0]

  def is_published(self, version: base.VersionId) -> bool:
    return self._exists(self.version_urls(version)[2])

  def objects_of(self, version: base.VersionId) -> List[str]:
    """Every object of the version now (manifest first, so a restore can put it back last)."""
    savedmodel, archive, manifest = self.version_urls(version)
    return ([url for url in (manifest, archive) if self._exists(url)]
            + self._objects(savedmodel + "/"))

  def roll_forward(self, places: Sequence[Sequence[str]], old: Sequence[str]) -> None:
    """Puts the staged objects in place, the manifest (last of `places`) last; then deletes the
    objects of `old` that the new version does not have. Safe to repeat."""
    manifest = places[-1][1]
    self.remove_quietly(manifest)
    for staged, final in places:
      self.call(f"copying {staged} to {final}", self.fs.copy, staged, final)
    new = {final for _, final in places}
    for url in old:
      if url not in new:
        self.call(f"removing {url}", self.fs.rm, url)

  def roll_back(self, places: Sequence[Sequence[str]], kept: Sequence[Tuple[str, str]],
                error: BaseException) -> None:
    """Deletes what `places` put in place and restores `kept` (original, aside) manifest last;
    tries every restore and adds their failures to `error`'s notes."""
    self.remove_quietly(places[-1][1])
    restored = {original for original, _ in kept}
    for _, final in places:
      if final not in restored:
        self.remove_quietly(final)
    for original, aside in list(kept[1:]) + list(kept[:1]):
      try:
        self.call(f"restoring {original}", self.fs.copy, aside, original)
      except Exception as restore_error:  # pylint: disable=broad-except
        error.add_note(f"also: {restore_error}")

  # base.Destination.

  def check(self, versions: Sequence[base.VersionId], overwrite: bool) -> None:
    bucket = self.root[len(SCHEME):].split("/")[0]
    try:
      self.fs.invalidate_cache()
      if not self.fs.exists(bucket):
        raise base.PublishError(f"bucket gs://{bucket} does not exist or cannot be read")
    except base.PublishError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      raise base.PublishError(f"cannot reach gs://{bucket}: {error!r}") from error
    if overwrite:
      return
    for version in versions:
      if self.is_published(version):
        raise base.AlreadyPublishedError(
            f"{self.version_urls(version)[2]} already exists: versions are immutable "
            "(use --overwrite)")

  def begin(self, version: base.VersionId, overwrite: bool) -> GcsTransaction:
    found = self.read_claim(version)
    generation = 0
    if found:
      claim, generation = found
      if claim.get("state") in ("building", "committing"):
        if not self._is_stale(claim):
          raise base.VersionBusyError(
              f"{version} is being published by {claim.get('owner')} "
              f"({self._claim_url(version)}); try again later")
        self._recover(version, claim)
    try:
      generation = self.write_claim(version, generation,
                                    {"state": "building", "staging": None})
    except _ClaimLost:
      found = self.read_claim(version)
      owner = found[0].get("owner") if found else "another publisher"
      raise base.VersionBusyError(
          f"{version} is being published by {owner} ({self._claim_url(version)}); "
          "try again later") from None
    transaction = GcsTransaction(self, version, generation, overwrite)
    if not overwrite and self.is_published(version):
      transaction.abort()
      raise base.AlreadyPublishedError(
          f"{self.version_urls(version)[2]} already exists: versions are immutable "
          "(use --overwrite)")
    return transaction

  def _recover(self, version: base.VersionId, claim: Dict[str, Any],
               progress: base.Progress = lambda _: None) -> None:
    """Finishes an abandoned "committing" claim (roll forward) and deletes its staging."""
    if claim.get("state") == "committing":
      self.roll_forward(claim["places"], [url for url, _ in claim.get("old", [])])
      progress(f"finished the interrupted publish of {version} from {claim['staging']}")
    if claim.get("staging"):
      self.remove_quietly(claim["staging"])

  def remove_stale_staging(self, progress: base.Progress = lambda _: None) -> List[str]:
    removed = []
    prefix = self.url(CLAIMS_PREFIX) + "/"
    for url in self._objects(prefix):
      relative = url[len(prefix):]
      name, _, file_name = relative.rpartition("/")
      if not file_name.endswith(".json") or not file_name[:-5].isdigit():
        continue
      version = base.VersionId(name, int(file_name[:-5]))
      found = self.read_claim(version)
      if not found or found[0].get("state") not in ("building", "committing") \
          or not self._is_stale(found[0]):
        continue
      claim, generation = found
      try:
        # Take the claim first, so that only one sweeper recovers it.
        generation = self.write_claim(version, generation, {"state": "recovering",
                                                            "staging": claim.get("staging")})
      except _ClaimLost:
        continue
      self._recover(version, claim, progress)
      self.write_claim(version, generation,
                       {"state": "done" if self.is_published(version) else "free",
                        "staging": None})
      if claim.get("staging"):
        progress(f"removed {claim['staging']}, left by an interrupted export")
        removed.append(claim["staging"])
    return removed

  def published(self) -> List[base.Manifest]:
    manifests = []
    for url in self._objects(self.root + "/"):
      relative = url[len(self.root) + 1:]
      name, _, file_name = relative.partition("/")
      if (name.startswith(".") or "/" in file_name or not file_name.endswith(".manifest.json")
          or not file_name[:-len(".manifest.json")].isdigit()):
        continue
      manifests.append(json.loads(self.call(f"reading {url}", self.fs.cat_file, url)))
    return sorted(manifests, key=lambda m: (m["model"], m["version"]))

  def write_docs(self, options: base.DocsOptions, progress: base.Progress) -> List[str]:
    versions = tfhub.versions_of(self.published())
    if not versions:
      return []
    asset_base_url = options.asset_base_url or _public_url(self.root)
    with tempfile.TemporaryDirectory(prefix="video-swin-docs-") as local:
      tfhub.write_tree(local, versions, options.publisher, asset_base_url)
      docs_dir = os.path.join(local, tfhub.DOCS_DIR)
      urls = []
      for rel in _local_files(docs_dir):
        url = self.url(posixpath.join(tfhub.DOCS_DIR.replace(os.sep, "/"), rel))
        self.call(f"uploading {url}", self.fs.put_file, os.path.join(docs_dir, *rel.split("/")),
                  url)
        urls.append(url)
    progress(f"wrote {len(urls)} docs under {self.url(tfhub.DOCS_DIR.replace(os.sep, '/'))}")
    return urls


def _public_url(root: str) -> str:
  """The https URL that serves objects under `root` publicly."""
  return "https://storage.googleapis.com/" + root[len(SCHEME):]
