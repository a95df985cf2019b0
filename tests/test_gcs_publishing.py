"""gs:// publishing against fake-gcs-server (started on 127.0.0.1), which enforces generation
preconditions on multipart uploads: the claim that lets one publisher of a version win.

The versions here are small fake builds (tests/publishing_fakes.py), so races, failures and a
stop at every storage call are cheap; tests/test_concurrent_exports.py runs the CLI to gs://
(four at once, then a refused rerun), and tools/publish_trials.py kills real exports."""

import multiprocessing
import threading
import time

import pytest

from publishing_fakes import fake_build
import publishing_fakes
from video_swin_hub.export.destinations import base
from video_swin_hub.export.destinations import gcs

BUCKET = "hub-bucket"


@pytest.fixture(scope="module")
def emulator():
  """One in-memory fake-gcs-server for the module (each test uses its own prefix)."""
  with publishing_fakes.fake_gcs_server(BUCKET) as host:
    yield host


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


def _destination(root, **kwargs):
  return gcs.GcsDestination(f"gs://{BUCKET}/{root}", sleep=lambda _: None, **kwargs)


def _publish(root, tag, hold_s=0.0, overwrite=False, **options):
  """Publishes a fake version m/1 whose files carry `tag`; "ok" or the error's one line."""
  return publishing_fakes.publish_gcs(f"gs://{BUCKET}/{root}", "m", 1, tag, hold_s, overwrite,
                                      **options)


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
    results = pool.starmap(publishing_fakes.publish_gcs,
                           [(f"gs://{BUCKET}/race", "m", 1, f"run{i}", 1.0) for i in range(4)])
  assert results.count("ok") == 1, results
  for result in results:
    if result != "ok":
      assert result.startswith("error: m/1 is being published by host ") or \
          "already exists" in result, result
  assert _tag(fs, "race") == f"run{results.index('ok')}"


def test_different_versions_publish_in_parallel(emulator, fs):
  del emulator
  with multiprocessing.get_context("spawn").Pool(4) as pool:
    results = pool.starmap(publishing_fakes.publish_gcs,
                           [(f"gs://{BUCKET}/parallel", f"m{i % 2}", 1 + i // 2,
                             f"m{i % 2}-{1 + i // 2}", 0.5) for i in range(4)])
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


class _Freezer:
  """A gcsfs file system whose `freeze_at`-th storage call (1-based) blocks until `resume`: to
  the bucket, a publisher frozen there is one killed just before that call. Counts the calls."""

  CALLS = ("put_file", "info", "copy", "rm_file", "rm", "exists", "find", "cat_file", "call")

  def __init__(self, fs, freeze_at=None):
    self._fs = fs
    self.freeze_at = freeze_at
    self.calls = 0
    self.claim_writes = []  # the numbers of the calls that wrote the claim (fs.call)
    self.frozen = threading.Event()
    self._resume = threading.Event()

  def resume(self):
    self._resume.set()

  def __getattr__(self, name):
    attribute = getattr(self._fs, name)
    if name not in self.CALLS:
      return attribute

    def counted(*args, **kwargs):
      self.calls += 1
      if name == "call":
        self.claim_writes.append(self.calls)
      if self.calls == self.freeze_at:
        self.frozen.set()
        self._resume.wait()
      return attribute(*args, **kwargs)

    return counted


LEASE_S = 0.1  # the frozen publishers' commit lease; short, so that the tests wait little


def _start_frozen(fs, root, freeze_at, tag="new", overwrite=True):
  """Starts publishing m/1 (`tag`) in a thread that freezes at storage call `freeze_at`; returns
  (freezer, thread, results) once it froze or finished."""
  freezer = _Freezer(fs, freeze_at)
  results = []
  destination = gcs.GcsDestination(f"gs://{BUCKET}/{root}", fs=freezer, commit_lease_s=LEASE_S,
                                   sleep=lambda _: None)
  thread = threading.Thread(
      target=lambda: results.append(
          publishing_fakes.publish(destination, "m", 1, tag, overwrite=overwrite)),
      daemon=True)
  thread.start()
  while thread.is_alive() and not freezer.frozen.wait(0.01):
    pass
  return freezer, thread, results


def test_overwrite_frozen_at_every_storage_call_leaves_old_or_new(fs):
  """--overwrite stopped before each of its storage calls in turn (as a SIGKILL there would):
  a later run, or a reader once the commit lease ran out, finds the complete old or the complete
  new version, never none, with the default day-long stale_after_s; a rerun publishes."""
  assert _publish("frozen-count", "old") == "ok"
  counter, thread, results = _start_frozen(fs, "frozen-count", None)
  thread.join()
  assert results == ["ok"] and counter.calls > 20
  outcomes = {"old": 0, "new": 0}
  root = "frozen"
  assert _publish(root, "old") == "ok"
  for point in range(1, counter.calls + 1):
    freezer, thread, _ = _start_frozen(fs, root, point)
    assert freezer.frozen.is_set() and thread.is_alive()
    if point % 2:
      # A later run: it waits for a live-looking commit to end or its lease to run out, then
      # rolls it forward; it finds a complete version (or a build that holds the version).
      later = _publish(root, "later")
      assert "already exists" in later or "is being published by" in later, (point, later)
    else:
      time.sleep(LEASE_S)
    tag = _tag(fs, root)  # a reader: the listing rolls forward an expired commit
    assert tag in outcomes, (point, tag)
    outcomes[tag] += 1
    # The rerun, a day later (stale_after_s=0 stands for it), so that even a frozen build's
    # claim is taken over; it puts the old version back for the next point.
    assert _publish(root, "old", overwrite=True, stale_after_s=0) == "ok"
    assert not [o for o in _objects(fs, root) if o.startswith(gcs.STAGING_PREFIX)], point
  assert _tag(fs, root) == "old"
  assert outcomes["old"] and outcomes["new"], outcomes
  print(f"{counter.calls} freeze points: {outcomes}")


def test_committer_whose_lease_was_taken_over_stops(fs):
  """A committer frozen longer than its lease before renewing its claim: another run rolls its
  commit forward and publishes over it; the thawed committer then fails, changing nothing."""
  assert _publish("thawed", "old") == "ok"
  assert _publish("thawed-count", "old") == "ok"
  counter, thread, _ = _start_frozen(fs, "thawed-count", None)
  thread.join()
  # Claim writes of an overwrite: begin's, "committing", a renewal before deleting the old
  # manifest, then one before each copy into place: the fifth comes after two copies.
  freezer, thread, results = _start_frozen(fs, "thawed", counter.claim_writes[4])
  assert freezer.frozen.is_set()
  time.sleep(LEASE_S)
  assert _publish("thawed", "later", overwrite=True) == "ok"
  before = {o: fs.cat(f"{BUCKET}/thawed/{o}") for o in _objects(fs, "thawed")
            if not o.startswith(".")}
  freezer.resume()
  thread.join(30)
  assert len(results) == 1 and "claimed by another publisher" in results[0], results
  fs.invalidate_cache()
  assert {o: fs.cat(f"{BUCKET}/thawed/{o}") for o in _objects(fs, "thawed")
          if not o.startswith(".")} == before
  assert _tag(fs, "thawed") == "later"
