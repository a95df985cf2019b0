r"""SIGKILL trials of `extract_features`: kill a run at a random moment, rerun it, and check that
the folder ends exactly as an uninterrupted run leaves it.

  python -m tools.extraction_kill_trials --model=DIR --videos=LIST --workdir=DIR [--trials=20] \
      [--seed=0] [-- extra extract_features flags, e.g. --num_clips=2 --shard_size=1]

First one uninterrupted run writes `WORKDIR/reference`; it gives the run's duration D and the
length W of its writing phase (from the moment its manifest appears, i.e. it holds the lock and
starts extracting, to its end). Each trial then starts the tool on `WORKDIR/trial-N` and sends it
SIGKILL: two trials in three at a uniformly random moment of the writing phase (W after the
manifest appears: while it decodes, writes a shard, an error line or the manifest), every third
one at a uniformly random moment of the whole run (D, mostly while it loads). It keeps the
complete lines of errors.tsv that the killed run left, and runs the tool again to the end. A trial passes when the
folder then holds each reference video exactly once with the reference features (atol 1e-5) and
view counts, the reference error rows, every error line the killed run had written, a complete
manifest with the reference counts and no temporaries. Prints one line per trial; exits 1 when a
trial fails.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import random
import signal
import subprocess
import sys
import time
from typing import List, Sequence, Tuple

from absl import app
from absl import flags

from video_swin_hub.extraction import records
from tools import extraction_folder_check
# pylint: enable=g-import-not-at-top,wrong-import-position

_MODEL = flags.DEFINE_string("model", None, "Model handle for extract_features.", required=True)
_VIDEOS = flags.DEFINE_string("videos", None, "--videos for extract_features.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the outputs (created).",
                               required=True)
_TRIALS = flags.DEFINE_integer("trials", 20, "Kill-and-rerun trials.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill delays.")

TOOL = "video_swin_hub.extraction.extract_features"


def tool_command(output: str, extra: Sequence[str]) -> List[str]:
  return [sys.executable, "-m", TOOL, f"--model={_MODEL.value}", f"--videos={_VIDEOS.value}",
          f"--output={output}", *extra]


def wait_for_manifest(process: subprocess.Popen, output: str) -> float:
  """Polls until `output`'s manifest exists or the process ends; the monotonic time then."""
  manifest = os.path.join(output, records.MANIFEST)
  while not os.path.exists(manifest) and process.poll() is None:
    time.sleep(0.01)
  return time.monotonic()


def run_to_end(output: str, extra: Sequence[str]) -> Tuple[float, float]:
  """Runs the tool to completion; (its duration, its writing phase) in seconds."""
  start = time.monotonic()
  process = subprocess.Popen(tool_command(output, extra), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  writing = wait_for_manifest(process, output)
  _, stderr = process.communicate()
  end = time.monotonic()
  if process.returncode:
    sys.exit(f"error: {TOOL} failed on {output}: {stderr.strip().splitlines()[-1:]}")
  return end - start, end - writing


def main(argv):
  extra = argv[1:]
  rng = random.Random(_SEED.value)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  reference = os.path.join(_WORKDIR.value, "reference")
  duration, writing = run_to_end(reference, extra)
  print(f"reference run: {duration:.1f} s, writing phase {writing:.1f} s", flush=True)
  failures = 0
  for trial in range(_TRIALS.value):
    output = os.path.join(_WORKDIR.value, f"trial-{trial}")
    phase = "whole run" if trial % 3 == 2 else "writing phase"
    process = subprocess.Popen(tool_command(output, extra), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    start = time.monotonic()
    if phase == "writing phase":
      start = wait_for_manifest(process, output)
    delay = rng.uniform(0, writing if phase == "writing phase" else duration)
    time.sleep(max(0.0, start + delay - time.monotonic()))
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_state = "finished before the kill" if process.returncode == 0 else "killed"
    shards_left = len(records.shard_paths(output)) if os.path.isdir(output) else 0
    earlier = extraction_folder_check.complete_error_lines(output)
    run_to_end(output, extra)
    found = extraction_folder_check.problems(output, reference, earlier)
    failures += bool(found)
    print(json.dumps({"trial": trial, "kill_in": phase, "kill_after_s": round(delay, 2),
                      "state": killed_state, "shards_before_rerun": shards_left,
                      "error_lines_before_rerun": len(earlier), "problems": found}), flush=True)
  print(f"{_TRIALS.value - failures}/{_TRIALS.value} trials ended as the uninterrupted run")
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  app.run(main)
