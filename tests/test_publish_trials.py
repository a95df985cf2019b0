"""tools/publish_trials.py with a small count: real publishes killed at random moments (the first
trial's kill lands in the commit) leave the old or the new version whole, and the rerun succeeds
(by hand: --trials=20 per case)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("destination", ["local", "gcs"])
def test_killed_overwrite_leaves_old_or_new(destination):
  result = subprocess.run(
      [sys.executable, "tools/publish_trials.py", f"--destination={destination}", "--overwrite",
       "--trials=1", "--seed=3"],
      cwd=REPO, capture_output=True, text=True, timeout=1200, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert "trial 1: killed " in result.stdout and " into its commit -> " in result.stdout
  assert f"{destination} overwrite=True: 1 kills: " in result.stdout
  assert "rerun ok" in result.stdout
