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
from the server is a failure), copy the old version's objects aside, record "committing" (the
staging prefix, where each object goes, a lease) in the claim, then swap: delete the old
completion object, copy the new objects into place (the manifest last), delete objects of the old
version that the new one does not have, mark the claim "done", delete staging. Until "committing"
the old version is untouched and readable. The committer renews its claim (with its generation
precondition) before every step of the swap; a "committing" claim not renewed within its lease
(`commit_lease_s`, a minute) belongs to a dead run, and the next run's `begin`, the stale-staging
sweep or a listing rolls it forward from staging, whatever `stale_after_s` is: the staged version
is complete and verified, and rolling forward is idempotent. A run that finds a live
"committing" claim waits for it to end (or its lease to run out). A committer whose renewal fails
(its lease ran out and another run took over) stops at once. A failure the committer sees during
the swap is rolled back: the old objects, copied aside before anything changed, are put back
(every restore is tried; the first error is reported). A killed run's "building" claim counts as
abandoned once older than `stale_after_s`: only its staging is deleted. What the lease assumes:
no single storage call of a live committer outlasts it (a process frozen for longer between a
renewal and its next call could still make that one call).

`STORAGE_EMULATOR_HOST=http://HOST:PORT` points gcsfs at a local emulator with anonymous access;
otherwise gcsfs finds Google credentials the usual way.
"""

import base64
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

from . import base
from ..docs import tfhub
# pylint: enable=g-import-not-at-top,wrong-import-position

SCHEME = "gs://"
STAGING_PREFIX = ".staging"
CLAIMS_PREFIX = ".claims"
_BOUNDARY = "==claim=="


def from_url(output_dir: str, options: base.DestinationOptions) -> "GcsDestination":
  return GcsDestination(output_dir, stale_after_s=options.stale_after_s,
                        commit_lease_s=options.commit_lease_s)


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


# Claim states in which a run owns the version ("done" and "free" let anyone take it).
_BUILDING, _COMMITTING = "building", "committing"


class _Hold:
  """A version's claim as this run last wrote it; every write names the generation it read."""

  def __init__(self, destination: "GcsDestination", version: base.VersionId, generation: int):
    self.destination = destination
    self.version = version
    self.generation = generation
    self.content: Dict[str, Any] = {}

  def write(self, **content) -> None:
    """Raises _ClaimLost when someone else wrote the claim since."""
    self.generation = self.destination.write_claim(self.version, self.generation, content)
    self.content = content

  def renew(self) -> None:
    """Rewrites the same content: proves this run alive (a fresh time) and still the owner."""
    self.write(**self.content)


class GcsTransaction(base.Transaction):
  """Owns one version's claim (`hold`), which names `staging`, the prefix it uploads to; builds
  in a local temporary `work_dir`."""

  def __init__(self, destination: "GcsDestination", hold: _Hold, staging: str):
    self._destination = destination
    self._version = hold.version
    self._hold: Optional[_Hold] = hold
    self.staging = staging
    self.work_dir = tempfile.mkdtemp(prefix="video-swin-gcs-")

  def commit(self, built: base.BuiltVersion) -> str:
    d, hold = self._destination, self._hold
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
    hold.write(state=_COMMITTING, staging=self.staging, places=places, old=kept,
               lease_s=d.commit_lease_s)
    try:
      d.roll_forward(places, old, hold.renew)
    except _ClaimLost:
      self._hold = None  # the run that took the version over finishes this commit
      raise
    except BaseException as error:
      try:
        d.roll_back(places, kept, error, hold.renew)
        hold.write(state="done" if kept else "free", staging=self.staging)
      except _ClaimLost:
        self._hold = None
      raise
    hold.write(state="done", staging=self.staging)
    return d.handle(self._version)

  def abort(self) -> None:
    shutil.rmtree(self.work_dir, ignore_errors=True)
    hold, self._hold = self._hold, None
    # "committing" here means the swap was interrupted by something the commit could not handle:
    # the staging stays for whoever rolls it forward once the lease runs out.
    if hold is None or hold.content.get("state") == _COMMITTING:
      return
    try:
      self._destination.release(hold, self.staging)
    except base.PublishError:
      pass  # a claim left "building" is taken over once stale


class GcsDestination(base.Destination):
  """Publishes under one `gs://bucket[/prefix]` root.

  Args:
    root: `gs://bucket[/prefix]`.
    fs: the gcsfs file system (default: `filesystem()`).
    stale_after_s: "building" claims older than this are abandoned.
    commit_lease_s: how long a "committing" claim stays its writer's without a renewal.
    attempts: tries per storage call on transient errors.
    backoff_s: wait before the second try; doubles after each failed try.
    sleep: how to wait between tries (tests pass a no-op).
  """

  def __init__(self, root: str, fs: Optional[gcsfs.GCSFileSystem] = None,
               stale_after_s: float = base.DestinationOptions.stale_after_s,
               commit_lease_s: float = base.DestinationOptions.commit_lease_s, attempts: int = 5,
               backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep):
    if not root.startswith(SCHEME) or not root[len(SCHEME):].strip("/"):
      raise base.PublishError(f"{root!r} is not a gs://bucket[/prefix] path")
    self.root = root.rstrip("/")
    self.fs = fs if fs is not None else filesystem()
    self.stale_after_s = stale_after_s
    self.commit_lease_s = commit_lease_s
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

  def delete(self, url: str) -> None:
    """Deletes the object `url` if it exists; raises PublishError if that fails."""

    def delete_if_present():
      try:
        self.fs.rm_file(url)
      except FileNotFoundError:
        pass  # already gone: repeating a roll-forward finds what it deleted before

    self.call(f"removing {url}", delete_if_present)
    self.fs.invalidate_cache()

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

  def _age(self, claim: Dict[str, Any]) -> float:
    return _now() - float(claim.get("time", 0))

  def _lease_left(self, claim: Dict[str, Any]) -> float:
    """Seconds until a "committing" claim's lease runs out (<= 0: its writer is gone)."""
    return float(claim.get("lease_s", self.commit_lease_s)) - self._age(claim)

  def _needs_recovery(self, claim: Dict[str, Any]) -> bool:
    """Whether the claim is abandoned work or holds leftover staging that anyone may finish."""
    state = claim.get("state")
    if state == _COMMITTING:
      return self._lease_left(claim) <= 0
    if state == _BUILDING:
      return self._age(claim) > self.stale_after_s
    return bool(claim.get("staging"))

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

  def roll_forward(self, places: Sequence[Sequence[str]], old: Sequence[str],
                   renew: Callable[[], None]) -> None:
    """Puts the staged objects in place, the manifest (last of `places`) last; then deletes the
    objects of `old` that the new version does not have. Calls `renew` before every step (it
    raises _ClaimLost when the claim was taken over). Safe to repeat."""
    manifest = places[-1][1]
    renew()
    self.delete(manifest)
    for staged, final in places:
      renew()
      self.call(f"copying {staged} to {final}", self.fs.copy, staged, final)
    new = {final for _, final in places}
    for url in old:
      if url not in new:
        renew()
        self.delete(url)

  def roll_back(self, places: Sequence[Sequence[str]], kept: Sequence[Tuple[str, str]],
                error: BaseException, renew: Callable[[], None]) -> None:
    """Deletes what `places` put in place and restores `kept` (original, aside) manifest last;
    tries every restore and adds their failures to `error`'s notes. `renew` as in roll_forward."""
    renew()
    self.remove_quietly(places[-1][1])
    restored = {original for original, _ in kept}
    for _, final in places:
      if final not in restored:
        self.remove_quietly(final)
    for original, aside in list(kept[1:]) + list(kept[:1]):
      renew()
      try:
        self.call(f"restoring {original}", self.fs.copy, aside, original)
      except Exception as restore_error:  # pylint: disable=broad-except
        error.add_note(f"also: {restore_error}")

  def release(self, hold: _Hold, staging: Optional[str]) -> None:
    """Marks the held version "done" (published) or "free", then deletes `staging`. The claim
    names the staging until it is gone, so a run killed in between leaves it to the next sweep.

    Raises:
      _ClaimLost: someone else wrote the claim since `hold` last did.
    """
    state = "done" if self.is_published(hold.version) else "free"
    if staging:
      if hold.content != {"state": state, "staging": staging}:
        hold.write(state=state, staging=staging)
      self.remove_quietly(staging)
    hold.write(state=state, staging=None)

  def _recover(self, version: base.VersionId, claim: Dict[str, Any], generation: int,
               progress: base.Progress) -> _Hold:
    """Takes over a claim that `_needs_recovery` and finishes it: rolls an abandoned commit
    forward, then deletes the staging. Returns the hold on the claim.

    Raises:
      _ClaimLost: another run took the claim first (it does the recovery).
    """
    hold = _Hold(self, version, generation)
    staging = claim.get("staging")
    if claim.get("state") == _COMMITTING:
      # Taking the claim (as "committing", with this run's lease) makes this run the only
      # finisher; if it dies too, the next one takes over in turn.
      hold.write(state=_COMMITTING, staging=staging, places=claim["places"],
                 old=claim.get("old", []), lease_s=self.commit_lease_s)
      self.roll_forward(claim["places"], [url for url, _ in claim.get("old", [])], hold.renew)
      progress(f"finished the interrupted publish of {version} from {staging}")
    self.release(hold, staging)
    return hold

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
    # Named in the claim from the start, so that a sweep finds what a killed upload left.
    run = uuid.uuid4().hex[:12]
    staging = self.url(f"{STAGING_PREFIX}/{version.name}-{version.version}-{run}")
    while True:
      found = self.read_claim(version)
      claim, generation = found if found else ({}, 0)
      if claim.get("state") == _COMMITTING and self._lease_left(claim) > 0:
        # A live commit ends soon (it only copies); a dead one's lease runs out.
        time.sleep(min(1.0, self._lease_left(claim)))
        continue
      if claim.get("state") == _BUILDING and not self._needs_recovery(claim):
        raise self._busy(version, claim)
      try:
        if self._needs_recovery(claim):
          generation = self._recover(version, claim, generation, lambda _: None).generation
        hold = _Hold(self, version, generation)
        hold.write(state=_BUILDING, staging=staging)
      except _ClaimLost:
        found = self.read_claim(version)
        raise self._busy(version, found[0] if found else {}) from None
      break
    transaction = GcsTransaction(self, hold, staging)
    if not overwrite and self.is_published(version):
      transaction.abort()
      raise base.AlreadyPublishedError(
          f"{self.version_urls(version)[2]} already exists: versions are immutable "
          "(use --overwrite)")
    return transaction

  def _busy(self, version: base.VersionId, claim: Dict[str, Any]) -> base.VersionBusyError:
    return base.VersionBusyError(
        f"{version} is being published by {claim.get('owner', 'another publisher')} "
        f"({self._claim_url(version)}); try again later")

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
      if not found or not self._needs_recovery(found[0]):
        continue
      claim, generation = found
      try:
        self._recover(version, claim, generation, progress)
      except _ClaimLost:
        continue  # another run recovers it
      if claim.get("staging"):
        progress(f"removed {claim['staging']}, left by an interrupted export")
        removed.append(claim["staging"])
    return removed

  def published(self) -> List[base.Manifest]:
    self.remove_stale_staging()  # rolls forward commits whose writer died, so they are listed
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
