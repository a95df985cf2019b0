r"""Exports, verifies and packages every collection variant, then writes the tfhub.dev docs.

  python -m export.export_all --output_dir=DIR [--variants=a,b] [--checkpoint_dir=CKPTS] \
      [--version=1] [--publisher=ID] [--asset_base_url=URL] [--cache_dir=CACHE] [--overwrite] \
      [--outputs=features,logits,feature_map] [--input_size=32,224,224]

For each variant and each requested output (default: the pooled feature) this writes a Hub model
<name> (the variant name, plus a suffix for another output or input size):
  DIR/<name>/<N>/               the fine-tunable SavedModel (input `video` float32
                                [None, 3, 32, 224, 224] in [0, 1], output `features` [None, 8C];
                                on request `logits` [None, K], `feature_map` [None, 8C, 16, 7, 7]),
  DIR/<name>/<N>.tar.gz         the same files at the archive root, as tfhub.dev serves them,
  DIR/<name>/<N>.manifest.json  checkpoint and archive sha256, contract, tool versions,
and finally the docs tree under DIR/tfhub.dev/assets/docs. Checkpoints come from
`CKPTS/<name>.pth`, or else are downloaded from the registry (cached in CACHE, sha256-checked).
DIR may be `gs://bucket/prefix`: each version is then built and verified in a local temporary
folder and published through gcsfs (staged upload, checked, copied into place; see export/gcs.py).

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
import re
import shutil
import sys
import tempfile
import time
from typing import Callable, List, Optional, Sequence

from absl import app
from absl import flags

from export import docs
from export import gcs
from export import packaging
from export import published_models
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
_OUTPUTS = flags.DEFINE_list(
    "outputs", [published_models.DEFAULT_OUTPUT],
    "Outputs to publish, each as its own Hub model: the pooled feature, the classifier's logits, "
    "the final feature map: " + ",".join(published_models.OUTPUTS) + ".")
_INPUT_SIZE = flags.DEFINE_list("input_size", ["32", "224", "224"],
                                "Frames,height,width of the exported input.")

STAGING_DIR = ".staging"
# Errors that mean "this input cannot be exported"; they end the run with one line.
EXPORT_ERRORS = (variants_lib.UnknownVariantError, published_models.InputSizeError,
                 published_models.UnknownOutputError, checkpoint.CheckpointError,
                 conversion.ConversionError, download.DownloadError, savedmodel.ExportError,
                 gcs.PublishError)


@dataclasses.dataclass(frozen=True)
class Published:
  """Paths of one published version, and what the summary reports about it."""
  model: published_models.PublishedModel
  version: int
  savedmodel_dir: str
  archive: str
  manifest: str
  archive_sha256: str
  archive_bytes: int
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


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_staging(output_dir: str, progress: Callable[[str], None] = print) -> None:
  """Deletes staging folders left by exports that were killed (their process is gone)."""
  staging_root = os.path.join(output_dir, STAGING_DIR)
  if not os.path.isdir(staging_root):
    return
  for entry in sorted(os.listdir(staging_root)):
    match = re.search(r"-pid(\d+)-", entry)
    if match and not _process_exists(int(match.group(1))):
      shutil.rmtree(os.path.join(staging_root, entry), ignore_errors=True)
      progress(f"removed {os.path.join(staging_root, entry)}, left by an interrupted export")
  try:
    os.rmdir(staging_root)
  except OSError:
    pass


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


def export_model(model: published_models.PublishedModel, checkpoint_path: str,
                 checkpoint_source: str, output_dir: str, version: int, overwrite: bool = False,
                 progress: Callable[[str], None] = print) -> Published:
  """Converts, saves, verifies and packages one model, then publishes it under `output_dir`.

  Args:
    model: the variant, output and input size to export.
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
    check_not_published(output_dir, model.name, version)
  progress("converting")
  root = savedmodel.build_model(model, checkpoint_path)

  staging_root = os.path.join(output_dir, STAGING_DIR)
  os.makedirs(staging_root, exist_ok=True)
  # The pid lets a later run tell a killed run's leftovers from a running export's folder.
  staging = tempfile.mkdtemp(prefix=f"{model.name}-{version}-pid{os.getpid()}-",
                             dir=staging_root)
  try:
    staged = published_paths(staging, "new", version)
    os.makedirs(os.path.dirname(staged[0]))
    progress("exporting")
    root.save(staged[0])
    progress("verifying")
    packaging.verify(staged[0], root, model)
    progress("packing")
    packaging.make_archive(staged[0], staged[1])
    problems = validate_docs.validate_archive(staged[1])
    if problems:
      raise savedmodel.ExportError(f"archive rejected: {'; '.join(problems)}")
    archive_sha256 = download.sha256_file(staged[1])
    packaging.write_manifest(
        staged[2], model=model, version=version, archive_sha256=archive_sha256,
        checkpoint_sha256=download.sha256_file(checkpoint_path),
        checkpoint_source=checkpoint_source,
        trainable_parameters=packaging.parameter_count(root.trainable_variables))
    final = published_paths(output_dir, model.name, version)
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
  return Published(model, version, *final, archive_sha256, os.path.getsize(final[1]),
                   time.monotonic() - start)


def summary(results: Sequence[Published]) -> str:
  """A fixed-width table: model, version, archive MiB, sha256 prefix, seconds."""
  width = max([len("model")] + [len(r.model.name) for r in results])
  lines = [f"{'model':<{width}}  version  archive MiB  sha256        seconds"]
  for r in results:
    mib = r.archive_bytes / 2**20
    lines.append(f"{r.model.name:<{width}}  {r.version:>7}  {mib:>11.1f}  {r.archive_sha256[:12]}  "
                 f"{r.seconds:>7.1f}")
  return "\n".join(lines)


def _selected_variants(names: Optional[Sequence[str]]) -> List[variants_lib.Variant]:
  if not names:
    return list(variants_lib.collection())
  return [variants_lib.get(name) for name in names]


def publish_to_gcs(published: Published, publisher: gcs.GcsPublisher, overwrite: bool,
                   progress: Callable[[str], None]) -> Published:
  """Publishes a verified local version under `publisher`'s root, then deletes the local copy."""
  urls = publisher.publish_version(
      published.model.name, published.version, published.savedmodel_dir, published.archive,
      published.manifest, overwrite=overwrite, progress=progress)
  for path in (published.archive, published.manifest):
    os.unlink(path)
  shutil.rmtree(published.savedmodel_dir)
  progress("published")
  return dataclasses.replace(published, savedmodel_dir=urls[0], archive=urls[1],
                             manifest=urls[2])


def main(argv):
  del argv
  output_dir, version = _OUTPUT_DIR.value, _VERSION.value
  publisher = None
  try:
    # Every input is checked before any work, so a bad name or a missing file writes nothing.
    selected = _selected_variants(_VARIANTS.value)
    input_size = published_models.parse_input_size(_INPUT_SIZE.value)
    outputs = [published_models.get_output(key) for key in dict.fromkeys(_OUTPUTS.value)]
    models = {variant.name: [published_models.PublishedModel(variant, output, input_size)
                             for output in outputs] for variant in selected}
    if gcs.is_gcs(output_dir):
      publisher = gcs.GcsPublisher(output_dir)
    for variant in selected:
      if _CHECKPOINT_DIR.value:
        local_checkpoint(_CHECKPOINT_DIR.value, variant.name)
      if not _OVERWRITE.value:
        for model in models[variant.name]:
          if publisher:
            publisher.check_not_published(model.name, version)
          else:
            check_not_published(output_dir, model.name, version)
  except EXPORT_ERRORS as error:
    sys.exit(f"error: {error}")

  try:
    if publisher:
      publisher.remove_stale_staging(progress=print)
    else:
      remove_stale_staging(output_dir)
  except EXPORT_ERRORS as error:
    sys.exit(f"error: {error}")
  # With a gs:// destination, versions are built and verified here first.
  work_dir = tempfile.mkdtemp(prefix="video-swin-export-") if publisher else output_dir
  try:
    results = []
    total = len(selected) * len(outputs)
    for variant in selected:
      if _CHECKPOINT_DIR.value:
        source = checkpoint_path = local_checkpoint(_CHECKPOINT_DIR.value, variant.name)
      else:
        source = variant.checkpoint_urls[0]
        print(f"{variant.name}: downloading", flush=True)
        checkpoint_path = download.fetch(source, _CACHE_DIR.value, variant.checkpoint_sha256)
      for model in models[variant.name]:
        def progress(stage, prefix=f"[{len(results) + 1}/{total}] {model.name}"):
          print(f"{prefix}: {stage}", flush=True)

        published = export_model(model, checkpoint_path, source, work_dir, version,
                                 _OVERWRITE.value, progress)
        if publisher:
          published = publish_to_gcs(published, publisher, _OVERWRITE.value, progress)
        results.append(published)

    docs.write_tree(work_dir, [r.model for r in results], version, _PUBLISHER.value,
                    _ASSET_BASE_URL.value)
    if publisher:
      publisher.upload_tree(os.path.join(work_dir, docs.DOCS_DIR),
                            docs.DOCS_DIR.replace(os.sep, "/"))
  except EXPORT_ERRORS as error:
    sys.exit(f"error: {error}")
  finally:
    if publisher:
      shutil.rmtree(work_dir, ignore_errors=True)
  print(summary(results), flush=True)


if __name__ == "__main__":
  app.run(main)
