"""Turning an exported SavedModel into what gets published: archive, manifest and checks.

The archive is the `.tar.gz` that tfhub.dev's `asset-path` points at; the manifest is a JSON record
of what went into it (checkpoint, contract, tool versions); `verify` reloads the SavedModel the way
users will and compares it with the in-memory model it was saved from.

`hub.KerasLayer` needs tf_keras: set `TF_USE_LEGACY_KERAS=1` before TensorFlow is first imported.
"""

import datetime
import gzip
import importlib.metadata
import json
import os
import platform
import tarfile
from typing import Any, Dict

import keras
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

from . import errors
from . import files
from . import published_models
from ..hub_models.hub_module import VideoModule

_TOOLS = ("tensorflow", "tf_keras", "tensorflow_hub", "numpy")
# Largest accepted relative Frobenius error between a reloaded model and the in-memory one.
_MAX_RELATIVE_ERROR = 1e-5


def _archive_members(savedmodel_dir: str):
  """Yields (absolute path, archive name) for every folder and file below `savedmodel_dir`,
  sorted by archive name so the archive does not depend on the file system's listing order."""
  entries = []
  for root, dirs, files in os.walk(savedmodel_dir):
    for name in dirs + files:
      path = os.path.join(root, name)
      entries.append((path, os.path.relpath(path, savedmodel_dir).replace(os.sep, "/")))
  return sorted(entries, key=lambda entry: entry[1])


def make_archive(savedmodel_dir: str, archive_path: str) -> None:
  """Writes `savedmodel_dir`'s contents as a `.tar.gz` with its files at the archive root.

  tfhub.dev wants `saved_model.pb`, `variables/...` at the root (no enclosing folder). Member
  order, mtimes, owners and the gzip header are fixed, so the same SavedModel always gives the same
  bytes (and hence the same sha256).
  """

  def write(f):
    # filename="" and mtime=0 keep the gzip header free of the temp file's name and the time.
    with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
      with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, name in _archive_members(savedmodel_dir):
          info = tar.gettarinfo(path, arcname=name)
          info.mtime = 0
          info.uid = info.gid = 0
          info.uname = info.gname = ""
          info.mode = 0o755 if info.isdir() else 0o644
          if info.isfile():
            with open(path, "rb") as member:
              tar.addfile(info, member)
          else:
            tar.addfile(info)

  files.write_atomically(archive_path, write)


def manifest(model: published_models.PublishedModel, version: int, archive_sha256: str,
             archive_bytes: int, checkpoint_sha256: str, checkpoint_source: str,
             checkpoint_trust: str, trainable_parameters: int) -> Dict[str, Any]:
  """The JSON-ready record of one exported version.

  Args:
    model: the exported model (variant, output, input size).
    version: the model version (positive int).
    archive_sha256: hex sha256 of the `.tar.gz` archive.
    archive_bytes: the archive's size.
    checkpoint_sha256: hex sha256 of the official `.pth` checkpoint the weights came from.
    checkpoint_source: the checkpoint's local path or URL.
    checkpoint_trust: how its sha256 was established (hub_models.download.trust).
    trainable_parameters: number of trainable scalars (backbone, and head if kept).
  """
  tools = {"python": platform.python_version()}
  tools.update({tool: importlib.metadata.version(tool) for tool in _TOOLS})
  return {
      "model": model.name,
      "identity": published_models.identity(model),
      "variant": model.variant.name,
      "version": version,
      "archive_sha256": archive_sha256,
      "archive_bytes": archive_bytes,
      "checkpoint_sha256": checkpoint_sha256,
      "checkpoint_source": checkpoint_source,
      "checkpoint_trust": checkpoint_trust,
      "input": {"name": "video", "shape": [None, *model.input_shape], "dtype": "float32",
                "range": [0, 1], "layout": "NCTHW"},
      "output": {"name": model.output.key, "shape": [None, *model.output_shape],
                 "dtype": "float32"},
      "trainable_parameters": trainable_parameters,
      "tools": tools,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def write_manifest(path: str, **fields) -> Dict[str, Any]:
  """Writes `manifest(**fields)` to `path` as indented JSON (atomically) and returns it."""
  record = manifest(**fields)
  text = json.dumps(record, indent=2) + "\n"
  files.write_text_atomically(path, text)
  return record


def parameter_count(variables) -> int:
  """Total number of scalars in a list of variables."""
  return sum(int(np.prod(v.shape)) for v in variables)


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def verify(savedmodel_dir: str, reference_model: VideoModule,
           model: published_models.PublishedModel) -> None:
  """Checks the SavedModel as users will load it against the model it was saved from.

  Loads it through `hub.KerasLayer` (tf_keras, fine-tunable) and Keras 3's `TFSMLayer`, checks the
  serving signature's contract, that both give `reference_model`'s output on one random clip
  `[1, *model.input_shape]` float32, and that every parameter is trainable after reloading.

  Raises:
    errors.ExportError: on the first mismatch, with a one-line message.
  """
  hub_layer = hub.KerasLayer(savedmodel_dir, trainable=True)
  serving = hub_layer.resolved_object.signatures["serving_default"]
  (spec,) = serving.structured_input_signature[1].values()
  expected_input = [None, *model.input_shape]
  if spec.shape.as_list() != expected_input or spec.dtype != tf.float32:
    raise errors.ExportError(
        f"{savedmodel_dir}: serving input is {spec.dtype.name} {spec.shape}, "
        f"expected float32 {expected_input}")
  key = model.output.key
  output = serving.structured_outputs.get(key)
  expected_output = [None, *model.output_shape]
  if output is None or output.shape.as_list() != expected_output:
    raise errors.ExportError(
        f"{savedmodel_dir}: serving output {key!r} is {output}, expected {expected_output}")

  video = np.random.RandomState(0).rand(1, *model.input_shape).astype(np.float32)
  want = reference_model(tf.constant(video)).numpy()
  tfsm_layer = keras.layers.TFSMLayer(savedmodel_dir, call_endpoint="serving_default")
  outputs = {
      "hub.KerasLayer": hub_layer(video, training=False).numpy(),
      "keras.layers.TFSMLayer": np.asarray(tfsm_layer(video)[key]),
  }
  for loader, got in outputs.items():
    if got.shape != want.shape:
      raise errors.ExportError(
          f"{savedmodel_dir}: {loader} output shape {got.shape}, expected {want.shape}")
    error = _relative_error(got, want)
    if not error < _MAX_RELATIVE_ERROR:
      raise errors.ExportError(
          f"{savedmodel_dir}: {loader} differs from the in-memory model "
          f"(relative error {error:.3g} >= {_MAX_RELATIVE_ERROR:g})")

  reloaded = parameter_count(hub_layer.trainable_weights)
  in_memory = parameter_count(reference_model.trainable_variables)
  if reloaded != in_memory:
    raise errors.ExportError(
        f"{savedmodel_dir}: {reloaded} trainable parameters after reloading, {in_memory} in memory")
