"""Publishing transactions of the local destination: one publisher per version, whole versions
only, SIGKILL at any moment leaves the old or the new version, listings read earlier runs.

The versions here are small fake builds (a few files, no TensorFlow), so the trials are fast;
tests/test_export_all.py publishes real SavedModels through the same destination, and
tools/publish_trials.py kills real exports.
"""

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from video_swin_hub.export.destinations import base
from video_swin_hub.export.destinations import local
from publishing_fakes import fake_build, publish_local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = base.VersionId("m", 1)


def version_tags(root: str, version: base.VersionId = VERSION):
  """The tag of the complete version, None if there is none; fails on a mixed version."""
  destination = local.LocalDestination(root)
  listed = [m for m in destination.published() if m["model"] == version.name
            and m["version"] == version.version]
  savedmodel, archive, _ = destination.paths(version)
  if not listed:
    return None
  tag = listed[0]["tag"]
  for path in (os.path.join(savedmodel, "saved_model.pb"),
               os.path.join(savedmodel, "variables", "variables.index"), archive):
    with open(path) as f:
      assert f.read() == tag, f"{path} belongs to another build than the manifest ({tag})"
  return tag


def test_one_of_four_concurrent_publishers_wins(tmp_path):
  with multiprocessing.get_context("fork").Pool(4) as pool:
    results = pool.starmap(publish_local,
                           [(str(tmp_path), "m", 1, f"run{i}", 1.0) for i in range(4)])
  winners = [r for r, tag in zip(results, range(4)) if r == "ok"]
  assert len(winners) == 1, results
  for result in results:
    if result != "ok":
      assert result.startswith("error: m/1 is being published by host ")
      assert "\n" not in result
  assert version_tags(str(tmp_path)) == f"run{results.index('ok')}"
  assert not os.listdir(tmp_path / local.STAGING_DIR / "m")


def test_different_versions_publish_in_parallel(tmp_path):
  with multiprocessing.get_context("fork").Pool(4) as pool:
    results = pool.starmap(publish_local, [(str(tmp_path), f"m{i % 2}", 1 + i // 2, f"run{i}",
                                            0.5) for i in range(4)])
  assert results == ["ok"] * 4
  listed = local.LocalDestination(str(tmp_path)).published()
  assert [(m["model"], m["version"]) for m in listed] == [("m0", 1), ("m0", 2), ("m1", 1),
                                                          ("m1", 2)]


def test_published_version_is_refused_and_kept(tmp_path):
  assert publish_local(str(tmp_path), "m", 1, "old", 0) == "ok"
  result = publish_local(str(tmp_path), "m", 1, "new", 0)
  assert result.startswith("error: ") and "already exists" in result
  assert version_tags(str(tmp_path)) == "old"
  with pytest.raises(base.AlreadyPublishedError):
    local.LocalDestination(str(tmp_path)).check([VERSION], overwrite=False)


def test_failed_build_leaves_the_old_version_byte_for_byte(tmp_path):
  assert publish_local(str(tmp_path), "m", 1, "old", 0) == "ok"
  before = _snapshot(tmp_path / "m")
  destination = local.LocalDestination(str(tmp_path))
  with pytest.raises(RuntimeError, match="verification failed"):
    with destination.begin(VERSION, overwrite=True) as transaction:
      fake_build(transaction.work_dir, VERSION, "new")
      raise RuntimeError("verification failed")
  assert _snapshot(tmp_path / "m") == before
  assert publish_local(str(tmp_path), "m", 1, "new", 0, overwrite=True) == "ok"
  assert version_tags(str(tmp_path)) == "new"


def _snapshot(folder):
  found = {}
  for root, _, names in os.walk(folder):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        found[os.path.relpath(os.path.join(root, name), folder)] = f.read()
  return found


_KILL_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from publishing_fakes import publish_local
print(publish_local({root!r}, "m", 1, {tag!r}, 0, overwrite={overwrite}), flush=True)
"""


@pytest.mark.parametrize("overwrite", [False, True])
def test_sigkill_at_random_moments_leaves_old_or_new(tmp_path, overwrite):
  trials = int(os.environ.get("PUBLISH_KILL_TRIALS", "20"))
  rng = random.Random(0)
  outcomes = {"none": 0, "old": 0, "new": 0}

  def start_child(root):
    return subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD.format(tests=os.path.dirname(__file__), root=root,
                                                  tag="new", overwrite=overwrite)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

  started = time.monotonic()  # one whole run, to spread the kills over
  assert start_child(str(tmp_path / "timing")).communicate()[0].strip() == b"ok"
  duration = time.monotonic() - started
  for trial in range(trials):
    root = str(tmp_path / f"t{trial}")
    if overwrite:
      assert publish_local(root, "m", 1, "old", 0) == "ok"
    child = start_child(root)
    time.sleep(rng.uniform(0, duration))  # anywhere in its run: import, lock, build, commit
    child.send_signal(signal.SIGKILL)
    output, _ = child.communicate()
    # Killed, or finished: anything else (a crash) would prove nothing.
    assert child.returncode == -signal.SIGKILL or output.strip() == b"ok", output
    tag = version_tags(root)
    assert tag in (("old", "new") if overwrite else (None, "new")), tag
    outcomes[tag or "none"] += 1
    assert publish_local(root, "m", 1, "rerun", 0, overwrite=True) == "ok"
    assert version_tags(root) == "rerun"
  print(f"{trials} kills: {outcomes}")
