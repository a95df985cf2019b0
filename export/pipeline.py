"""The one pipeline that publishes a Hub model version, used by every tool and destination.

  checkpoint -> SavedModel root (savedmodel.build_model) -> save -> verify (hub.KerasLayer and
  TFSMLayer against the in-memory model) -> archive (checked with tfhub.dev's rules) -> manifest
  -> destination transaction commit.

Everything after the conversion runs inside the destination's transaction (`Destination.begin`),
which holds the version from its "already published?" check to its commit; the files are built in
the transaction's `work_dir` and published only after every check passed.
"""

import dataclasses
import os
import time
from typing import Callable

from . import errors
from . import packaging
from . import published_models
from . import savedmodel
from .destinations import base
from .docs import validator
from ..hub_models import checkpoint as checkpoint_lib
from ..hub_models import conversion
from ..hub_models import download
from ..hub_models import hub_module
from ..hub_models import variants

EXPORT_ERRORS = (errors.ExportError, variants.UnknownVariantError, checkpoint_lib.CheckpointError,
                 conversion.ConversionError, download.DownloadError)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """The official checkpoint a model is converted from.

  Attributes:
    path: local `.pth` file.
    source: where it came from (local path or URL), for the manifest.
    trust: how its sha256 was established (hub_models.download.trust), for the manifest.
  """
  path: str
  source: str
  trust: str


@dataclasses.dataclass(frozen=True)
class PublishedVersion:
  """One version this run published, and what the summary reports about it."""
  model: published_models.PublishedModel
  version: int
  handle: str
  archive_sha256: str
  archive_bytes: int
  seconds: float


def build_version(model: published_models.PublishedModel, root: hub_module.VideoModule,
                  checkpoint: Checkpoint, version: int, work_dir: str,
                  progress: Callable[[str], None]) -> base.BuiltVersion:
  """Saves, verifies and packages `root` (the converted `model`) into the empty folder
  `work_dir`.

  Raises:
    EXPORT_ERRORS: a check failed.
  """
  savedmodel_dir = os.path.join(work_dir, "savedmodel")
  archive = os.path.join(work_dir, "archive.tar.gz")
  manifest_path = os.path.join(work_dir, "manifest.json")
  progress("exporting")
  root.save(savedmodel_dir)
  progress("verifying")
  packaging.verify(savedmodel_dir, root, model)
  progress("packing")
  packaging.make_archive(savedmodel_dir, archive)
  problems = validator.validate_archive(archive)
  if problems:
    raise errors.ExportError(f"archive rejected: {'; '.join(problems)}")
  manifest = packaging.write_manifest(
      manifest_path, model=model, version=version,
      archive_sha256=download.sha256_file(archive), archive_bytes=os.path.getsize(archive),
      checkpoint_sha256=download.sha256_file(checkpoint.path), checkpoint_source=checkpoint.source,
      checkpoint_trust=checkpoint.trust,
      trainable_parameters=packaging.parameter_count(root.trainable_variables))
  return base.BuiltVersion(base.VersionId(model.name, version), savedmodel_dir, archive,
                           manifest_path, manifest)


def publish(model: published_models.PublishedModel, checkpoint: Checkpoint,
            destination: base.Destination, version: int, overwrite: bool = False,
            progress: Callable[[str], None] = print) -> PublishedVersion:
  """Builds `model` and publishes it as `version` in `destination`, whole or not at all.

  Raises:
    EXPORT_ERRORS: nothing of the new version is visible, an old version is intact.
  """
  start = time.monotonic()
  # Converting only reads the checkpoint: a bad one fails before the destination is touched.
  progress("converting")
  root = savedmodel.build_model(model, checkpoint.path)
  with destination.begin(base.VersionId(model.name, version), overwrite) as transaction:
    built = build_version(model, root, checkpoint, version, transaction.work_dir, progress)
    progress("publishing")
    handle = transaction.commit(built)
  progress("done")
  return PublishedVersion(model, version, handle, built.manifest["archive_sha256"],
                          built.manifest["archive_bytes"], time.monotonic() - start)
