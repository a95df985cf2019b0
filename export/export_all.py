r"""Exports, verifies and packages every collection variant, then writes the tfhub.dev docs.

  python -m export.export_all --output_dir=DIR [--variants=a,b] [--checkpoint_dir=CKPTS] \
      [--version=1] [--publisher=ID] [--asset_base_url=URL] [--cache_dir=CACHE] [--overwrite]

For each variant this writes
  DIR/<name>/<N>/               the fine-tunable SavedModel (input `video` float32
                                [None, 3, 32, 224, 224] in [0, 1], output `features` [None, 8C]),
  DIR/<name>/<N>.tar.gz         the same files at the archive root, as tfhub.dev serves them,
  DIR/<name>/<N>.manifest.json  checkpoint and archive sha256, contract, tool versions,
and finally the docs tree under DIR/tfhub.dev/assets/docs. Checkpoints come from
`CKPTS/<name>.pth`, or else are downloaded from the registry (cached in CACHE, sha256-checked).

Each version is built in `DIR/.staging/<name>-<N>-<random>/`, checked (reloaded through
hub.KerasLayer and keras.layers.TFSMLayer and compared with the in-memory model; archive checked
with tfhub.dev's rules) and only then moved into place. Bad input ends with a one-line
`error: ...` before anything is written.
"""

import os

# hub.KerasLayer is a Keras 2 layer: select tf_keras before TensorFlow is imported anywhere.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import shutil
import sys
import tempfile
import time
from typing import Callable, List, Optional, Sequence

from absl import app
from absl import flags

from export import docs
from export import packaging
from export import savedmodel
from export import validate_docs
from hub_models import checkpoint
from hub_models import conversion
from hub_models import download
from hub_models import variants as variants_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Root of the export tree.", required=True)
_VARIANTS = flags.DEFINE_list(
    "variants", None, "Comma-separated variant names. Default: the whole collection.")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None,
    "Folder of official checkpoints named <variant>.pth. Default: download from the registry.")
_VERSION = flags.DEFINE_integer("version", 1, "Model version (a positive integer).", lower_bound=1)
_PUBLISHER = flags.DEFINE_string("publisher", docs.DEFAULT_PUBLISHER, "tfhub.dev publisher id.")
_ASSET_BASE_URL = flags.DEFINE_string(
    "asset_base_url", "https://storage.googleapis.com/YOUR_BUCKET/video-swin",
    "Where the archives will be hosted: <asset_base_url>/<name>/<N>.tar.gz goes in the docs.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "video_swin_checkpoints"),
    "Where downloaded checkpoints are kept, keyed by URL.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing versions.")

STAGING_DIR = ".staging"
# Errors that mean "this input cannot be exported"; they end the run with one line.
EXPORT_ERRORS = (variants_lib.UnknownVariantError, checkpoint.CheckpointError,
                 conversion.ConversionError, download.DownloadError, savedmodel.ExportError)


@dataclasses.dataclass(frozen=True)
class Published:
  """Paths of one published version, and what the summary reports about it."""
  name: str
  version: int
  savedmodel_dir: str
  archive: str
  manifest: str
  archive_sha256: str
  seconds: float


def published_paths(output_dir: str, name: str, version: int) -> List[str]:
  """[SavedModel folder, archive, manifest] of one version, in the order they are moved in."""
  base = os.path.join(output_dir, name, str(version))
  return [base, f"{base}.tar.gz", f"{base}.manifest.json"]


def check_not_published(output_dir: str, name: str, version: int) -> None:
  """Raises ExportError if any file of this version exists: versions are immutable."""
  for path in published_paths(output_dir, name, version):
    if os.path.exists(path):
      raise savedmodel.ExportError(
          f"{path} already exists: versions are immutable (use --overwrite)")


def local_checkpoint(checkpoint_dir: str, name: str) -> str:
  """`checkpoint_dir/<name>.pth`, or ExportError naming that path if it is missing."""
  path = os.path.join(checkpoint_dir, f"{name}.pth")
  if not os.path.isfile(path):
    raise savedmodel.ExportError(f"checkpoint {path} not found")
  return path


def _publish(staged: Sequence[str], final: Sequence[str], trash: str) -> None:
  """Moves each staged path onto its final path, in order.

  The SavedModel folder comes first in `final` but is moved LAST: it is what users load, so once
  it is visible the archive and manifest already are. Replaced versions (--overwrite) are moved
  into `trash` (inside staging, deleted by the caller). If a move fails, the moves already done
  are undone and replaced files put back, so no mixed or partial version stays visible.
  """
  order = list(zip(staged, final))
  order = order[1:] + order[:1]
  moved, replaced = [], []
  try:
    for index, (source, target) in enumerate(order):
      if os.path.exists(target):
        old = os.path.join(trash, f"old-{index}")
        os.replace(target, old)
        replaced.append((old, target))
      os.replace(source, target)
      moved.append(target)
  except BaseException:
    for target in moved:
      if os.path.isdir(target):
        shutil.rmtree(target, ignore_errors=True)
      else:
        os.unlink(target)
    for old, target in replaced:
      os.replace(old, target)
    raise


def export_variant(variant: variants_lib.Variant, checkpoint_path: str, checkpoint_source: str,
                   output_dir: str, version: int, overwrite: bool = False,
                   progress: Callable[[str], None] = print) -> Published:
  """Converts, saves, verifies and packages one variant, then publishes it under `output_dir`.

  Args:
    variant: the registry variant to export.
    checkpoint_path: local path of its official `.pth` checkpoint.
    checkpoint_source: where the checkpoint came from (path or URL), for the manifest.
    output_dir: root of the export tree.
    version: model version (positive int).
    overwrite: replace an existing version instead of refusing.
    progress: called with the name of each stage as it starts.

  Raises:
    CheckpointError, ConversionError, ExportError. Nothing is left visible on failure.
  """
  start = time.monotonic()
  if not overwrite:
    check_not_published(output_dir, variant.name, version)
  progress("converting")
  model = savedmodel.build_feature_extractor(variant, checkpoint_path)

  staging_root = os.path.join(output_dir, STAGING_DIR)
  os.makedirs(staging_root, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f"{variant.name}-{version}-", dir=staging_root)
  try:
    staged = published_paths(staging, "new", version)
    os.makedirs(os.path.dirname(staged[0]))
    progress("exporting")
    model.save(staged[0])
    progress("verifying")
    packaging.verify(staged[0], model, variant)
    progress("packing")
    packaging.make_archive(staged[0], staged[1])
    problems = validate_docs.validate_archive(staged[1])
    if problems:
      raise savedmodel.ExportError(f"archive rejected: {'; '.join(problems)}")
    archive_sha256 = download.sha256_file(staged[1])
    packaging.write_manifest(
        staged[2], variant=variant, version=version, archive_sha256=archive_sha256,
        checkpoint_sha256=download.sha256_file(checkpoint_path),
        checkpoint_source=checkpoint_source,
        trainable_parameters=packaging.parameter_count(model.backbone.trainable_variables))
    final = published_paths(output_dir, variant.name, version)
    os.makedirs(os.path.dirname(final[0]), exist_ok=True)
    _publish(staged, final, trash=staging)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    # Leave no empty .staging behind; another run's staging (not empty) is kept.
    try:
      os.rmdir(staging_root)
    except OSError:
      pass
  progress("done")
  return Published(variant.name, version, *final, archive_sha256, time.monotonic() - start)


def summary(results: Sequence[Published]) -> str:
  """A fixed-width table: variant, version, archive MiB, sha256 prefix, seconds."""
  width = max([len("variant")] + [len(r.name) for r in results])
  lines = [f"{'variant':<{width}}  version  archive MiB  sha256        seconds"]
  for r in results:
    mib = os.path.getsize(r.archive) / 2**20
    lines.append(f"{r.name:<{width}}  {r.version:>7}  {mib:>11.1f}  {r.archive_sha256[:12]}  "
                 f"{r.seconds:>7.1f}")
  return "\n".join(lines)


def _selected_variants(names: Optional[Sequence[str]]) -> List[variants_lib.Variant]:
  if not names:
    return list(variants_lib.collection())
  return [variants_lib.get(name) for name in names]


def main(argv):
  del argv
  output_dir, version = _OUTPUT_DIR.value, _VERSION.value
  try:
    # Every input is checked before any work, so a bad name or a missing file writes nothing.
    selected = _selected_variants(_VARIANTS.value)
    for variant in selected:
      if _CHECKPOINT_DIR.value:
        local_checkpoint(_CHECKPOINT_DIR.value, variant.name)
      if not _OVERWRITE.value:
        check_not_published(output_dir, variant.name, version)

    results = []
    for index, variant in enumerate(selected, start=1):
      def progress(stage, prefix=f"[{index}/{len(selected)}] {variant.name}"):
        print(f"{prefix}: {stage}", flush=True)

      if _CHECKPOINT_DIR.value:
        source = checkpoint_path = local_checkpoint(_CHECKPOINT_DIR.value, variant.name)
      else:
        source = variant.checkpoint_urls[0]
        progress("downloading")
        checkpoint_path = download.fetch(source, _CACHE_DIR.value, variant.checkpoint_sha256)
      results.append(export_variant(variant, checkpoint_path, source, output_dir, version,
                                    _OVERWRITE.value, progress))
  except EXPORT_ERRORS as error:
    sys.exit(f"error: {error}")

  docs.write_tree(output_dir, [variants_lib.get(r.name) for r in results], version,
                  _PUBLISHER.value, _ASSET_BASE_URL.value)
  print(summary(results), flush=True)


if __name__ == "__main__":
  app.run(main)
