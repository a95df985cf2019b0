"""tools/publish_trials.py with a small count: real publishes killed at random moments leave the
old or the new version whole, and the rerun succeeds (by hand: --trials=20 per case)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_killed_local_overwrite_leaves_old_or_new():
  result = subprocess.run(
      [sys.executable, "tools/publish_trials.py", "--destination=local", "--overwrite",
       "--trials=1", "--seed=3"],
      cwd=REPO, capture_output=True, text=True, timeout=1200, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert "local overwrite=True: 1 kills: " in result.stdout and "rerun ok" in result.stdout
