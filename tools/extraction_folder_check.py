"""Compares an extraction output folder with the folder an uninterrupted run wrote: what the kill
trials (`tools/extraction_kill_trials.py`) and the extraction tests check."""

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from video_swin_hub.extraction import records


def stored_rows(output: str) -> Tuple[Dict[str, Tuple[np.ndarray, int]], List[str]]:
  """({video_id: (features, num_views)}, ids stored more than once) of a folder's shards."""
  rows, duplicates = {}, []
  for row in records.read_features(output).as_numpy_iterator():
    video_id = row["video_id"].decode()
    if video_id in rows:
      duplicates.append(video_id)
    rows[video_id] = (row["features"], int(row["num_views"]))
  return rows, duplicates


def complete_error_lines(output: str) -> List[str]:
  """errors.tsv's complete lines (header and a torn last line left out), as written."""
  path = os.path.join(output, records.ERRORS)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [line for line in f.read().split("\n")[:-1] if line != records.ERRORS_HEADER]


def _error_rows(output: str) -> List[Tuple[str, str]]:
  return sorted({(path, reason) for path, reason, _ in records.read_errors(output)})


def problems(output: str, reference: str, earlier_errors: Sequence[str] = ()) -> List[str]:
  """How `output` differs from the uninterrupted run's `reference` folder ([] when it does not):
  videos missing, extra or stored twice, features (atol 1e-5) or view counts, error rows
  (path, reason), lines of `earlier_errors` no longer in errors.tsv, manifest counts and
  completeness, temporaries left."""
  found = []
  rows, duplicates = stored_rows(output)
  want, _ = stored_rows(reference)
  if duplicates:
    found.append(f"stored more than once: {sorted(set(duplicates))}")
  if sorted(rows) != sorted(want):
    found.append(f"videos {sorted(rows)} instead of {sorted(want)}")
  for video_id in sorted(set(rows) & set(want)):
    features, num_views = rows[video_id]
    if num_views != want[video_id][1] or not np.allclose(features, want[video_id][0], atol=1e-5,
                                                         rtol=0):
      found.append(f"{video_id}: features or view count differ from the reference")
  if _error_rows(output) != _error_rows(reference):
    found.append(f"error rows {_error_rows(output)} instead of {_error_rows(reference)}")
  final_lines = set(complete_error_lines(output))
  lost = [line for line in earlier_errors if line not in final_lines]
  if lost:
    found.append(f"error lines of an earlier run lost: {lost}")
  manifest = records.read_manifest(output) or {}
  reference_videos = records.read_manifest(reference)["videos"]
  if not manifest.get("complete") or manifest.get("videos") != reference_videos:
    found.append(f"manifest counts {manifest.get('videos')}, complete {manifest.get('complete')}")
  leftovers = [n for n in tf.io.gfile.listdir(output)
               if n.startswith(records.TEMP_PREFIX) or n.startswith("beam-temp-")]
  if leftovers:
    found.append(f"temporaries left: {leftovers}")
  return found
