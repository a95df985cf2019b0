r"""Exports, verifies, packages and publishes Hub models, then writes the docs of the destination.

  python -m export.export_all --output_dir=DEST [--variants=a,b] [--checkpoint_dir=CKPTS] \
      [--version=1] [--publisher=ID] [--asset_base_url=URL] [--cache_dir=CACHE] [--overwrite] \
      [--outputs=features,logits,feature_map] [--input_size=32,224,224] [--stale_after_s=86400]

Each (variant, output) is one Hub model, published as version N through export/pipeline.py into
DEST: a folder, `gs://bucket/prefix` or `kaggle://OWNER/MODEL` (export/destinations/). Checkpoints
come from `CKPTS/<variant>.pth`, or else are downloaded (cached in CACHE, sha256-checked).
Every input and the destination are checked before any work; bad input ends with one
`error: ...` line and nothing written. Each model then succeeds or fails on its own: the run
publishes what it can, writes the docs of every complete version in DEST (earlier runs' too),
prints a summary table and ends non-zero if any model failed.
"""

import os

# hub.KerasLayer is a Keras 2 layer: select tf_keras before TensorFlow is imported anywhere.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import sys
from typing import List, Optional, Sequence, Union

from absl import app
from absl import flags

from export import errors
from export import pipeline
from export import published_models
from export import destinations
from export.destinations import base
from export.docs import tfhub
from hub_models import download
from hub_models import variants as variants_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Destination: a folder, gs://bucket/prefix or kaggle://OWNER/MODEL.",
    required=True)
_VARIANTS = flags.DEFINE_list(
    "variants", None, "Comma-separated variant names. Default: the whole collection.")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None,
    "Folder of official checkpoints named <variant>.pth. Default: download from the registry.")
_VERSION = flags.DEFINE_integer("version", 1, "Model version (a positive integer).", lower_bound=1)
_PUBLISHER = flags.DEFINE_string("publisher", tfhub.DEFAULT_PUBLISHER, "tfhub.dev publisher id.")
_ASSET_BASE_URL = flags.DEFINE_string(
    "asset_base_url", None,
    "Where the archives are served: <asset_base_url>/<name>/<N>.tar.gz goes in the docs. "
    "Default: the destination's own location.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "video_swin_checkpoints"),
    "Where downloaded checkpoints are kept, keyed by URL.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace existing versions (the old one stays until the new is complete).")
_OUTPUTS = flags.DEFINE_list(
    "outputs", [published_models.DEFAULT_OUTPUT],
    "Outputs to publish, each as its own Hub model: the pooled feature, the classifier's logits, "
    "the final feature map: " + ",".join(published_models.OUTPUTS) + ".")
_INPUT_SIZE = flags.DEFINE_list("input_size", ["32", "224", "224"],
                                "Frames,height,width of the exported input.")
_STALE_AFTER_S = flags.DEFINE_float(
    "stale_after_s", base.DestinationOptions.stale_after_s,
    "Object stores only: a claim or staging older than this, left by a publisher that stopped "
    "updating it, is abandoned and removed.", lower_bound=0)


@dataclasses.dataclass(frozen=True)
class Failure:
  """A model this run could not publish."""
  model: published_models.PublishedModel
  reason: str


Outcome = Union[pipeline.PublishedVersion, Failure]


def summary(outcomes: Sequence[Outcome]) -> str:
  """A fixed-width table: model, version, archive MiB, sha256 prefix and seconds, or FAILED and
  the reason."""
  width = max([len("model")] + [len(o.model.name) for o in outcomes])
  lines = [f"{'model':<{width}}  version  archive MiB  sha256        seconds"]
  for o in outcomes:
    if isinstance(o, Failure):
      lines.append(f"{o.model.name:<{width}}  FAILED: {o.reason}")
    else:
      lines.append(f"{o.model.name:<{width}}  {o.version:>7}  {o.archive_bytes / 2**20:>11.1f}  "
                   f"{o.archive_sha256[:12]}  {o.seconds:>7.1f}")
  return "\n".join(lines)


def local_checkpoint(checkpoint_dir: str, name: str) -> str:
  """`checkpoint_dir/<name>.pth`, or ExportError naming that path if it is missing."""
  path = os.path.join(checkpoint_dir, f"{name}.pth")
  if not os.path.isfile(path):
    raise errors.ExportError(f"checkpoint {path} not found")
  return path


def _checkpoint(variant: variants_lib.Variant, checkpoint_dir: Optional[str],
                cache_dir: str) -> pipeline.Checkpoint:
  if checkpoint_dir:
    path = local_checkpoint(checkpoint_dir, variant.name)
    return pipeline.Checkpoint(path, path, download.trust(path, None))
  url = variant.checkpoint_urls[0]
  print(f"{variant.name}: downloading", flush=True)
  return pipeline.Checkpoint(download.fetch(url, cache_dir, variant.checkpoint_sha256), url,
                             download.trust(url, variant.checkpoint_sha256))


def publish_all(models: Sequence[published_models.PublishedModel],
                destination: base.Destination, version: int, overwrite: bool,
                checkpoint_dir: Optional[str], cache_dir: str) -> List[Outcome]:
  """Publishes each model on its own: a failure is recorded and the next model goes on."""
  outcomes: List[Outcome] = []
  checkpoints = {}
  for index, model in enumerate(models, 1):
    def progress(stage, prefix=f"[{index}/{len(models)}] {model.name}"):
      print(f"{prefix}: {stage}", flush=True)

    try:
      name = model.variant.name
      if name not in checkpoints:
        checkpoints[name] = _checkpoint(model.variant, checkpoint_dir, cache_dir)
      outcomes.append(pipeline.publish(model, checkpoints[name], destination, version,
                                       overwrite, progress))
    except pipeline.EXPORT_ERRORS as error:
      reason = errors.one_line(error)
      print(f"{model.name}: error: {reason}", file=sys.stderr, flush=True)
      outcomes.append(Failure(model, reason))
  return outcomes


def main(argv):
  del argv
  overwrite, version = _OVERWRITE.value, _VERSION.value
  try:
    # Every input is checked before any work, so a bad name or a missing file writes nothing.
    selected = ([variants_lib.get(name) for name in _VARIANTS.value] if _VARIANTS.value
                else list(variants_lib.collection()))
    input_size = published_models.parse_input_size(_INPUT_SIZE.value)
    outputs = [published_models.get_output(key) for key in dict.fromkeys(_OUTPUTS.value)]
    models = [published_models.PublishedModel(variant, output, input_size)
              for variant in selected for output in outputs]
    if _CHECKPOINT_DIR.value:
      for variant in selected:
        local_checkpoint(_CHECKPOINT_DIR.value, variant.name)
    destination = destinations.open_destination(
        _OUTPUT_DIR.value, base.DestinationOptions(stale_after_s=_STALE_AFTER_S.value))
    destination.check([base.VersionId(m.name, version) for m in models], overwrite)
    destination.remove_stale_staging(progress=print)
  except pipeline.EXPORT_ERRORS as error:
    sys.exit(f"error: {errors.one_line(error)}")

  outcomes = publish_all(models, destination, version, overwrite, _CHECKPOINT_DIR.value,
                         _CACHE_DIR.value)
  failures = [o for o in outcomes if isinstance(o, Failure)]
  try:
    if len(failures) < len(outcomes):
      destination.write_docs(base.DocsOptions(_PUBLISHER.value, _ASSET_BASE_URL.value), print)
  except pipeline.EXPORT_ERRORS as error:
    print(summary(outcomes), flush=True)
    sys.exit(f"error: writing the docs failed: {errors.one_line(error)}")
  print(summary(outcomes), flush=True)
  if failures:
    sys.exit(f"error: {len(failures)} of {len(outcomes)} models failed: "
             + ", ".join(f.model.name for f in failures))


if __name__ == "__main__":
  app.run(main)
