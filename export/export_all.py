r"""Exports, verifies, packages and publishes Hub models, then writes the destination's docs.

  python -m video_swin_hub.export.export_all --output_dir=DEST [--variants=a,b] [--checkpoint_dir=CKPTS] \
      [--outputs=features,logits,feature_map] [--input_size=32,224,224] [--version=1] \
      [--overwrite] [--publisher=ID] [--asset_base_url=URL] [--cache_dir=CACHE] \
      [--stale_after_s=86400]

Each variant x output is one Hub model, published as version N through export/pipeline.py into
DEST: a folder, `gs://bucket/prefix` or `kaggle://OWNER/MODEL` (export/destinations/). Checkpoints
come from `CKPTS/<variant>.pth`, or else are downloaded (cached in CACHE, sha256-checked). What
the run checks, and how it ends, is export/batch.py's docstring.
"""

import os

# hub.KerasLayer is a Keras 2 layer: select tf_keras before TensorFlow is imported anywhere.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import sys

from absl import app
from absl import flags

from . import batch
from . import errors
from . import pipeline
from . import published_models
from ..hub_models import download
from ..hub_models import variants as variants_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_COMMON = batch.CommonFlags()
_VARIANTS = flags.DEFINE_list(
    "variants", None, "Comma-separated variant names. Default: the whole collection.")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None,
    "Folder of official checkpoints named <variant>.pth. Default: download from the registry.")
_OUTPUTS = flags.DEFINE_list(
    "outputs", [published_models.DEFAULT_OUTPUT],
    "Outputs to publish, each as its own Hub model: the pooled feature, the classifier's logits, "
    "the final feature map: " + ",".join(published_models.OUTPUTS) + ".")


def local_checkpoint(checkpoint_dir: str, name: str) -> str:
  """`checkpoint_dir/<name>.pth`, or ExportError naming that path if it is missing."""
  path = os.path.join(checkpoint_dir, f"{name}.pth")
  if not os.path.isfile(path):
    raise errors.ExportError(f"checkpoint {path} not found")
  return path


def checkpoint_for(variant: variants_lib.Variant) -> pipeline.Checkpoint:
  """The variant's checkpoint: from --checkpoint_dir, or downloaded from the registry."""
  if _CHECKPOINT_DIR.value:
    path = local_checkpoint(_CHECKPOINT_DIR.value, variant.name)
    return pipeline.Checkpoint(path, path, download.trust(path, None))
  url = variant.checkpoint_urls[0]
  print(f"{variant.name}: downloading", flush=True)
  return pipeline.Checkpoint(download.fetch(url, _COMMON.cache_dir.value,
                                            variant.checkpoint_sha256),
                             url, download.trust(url, variant.checkpoint_sha256))


def main(argv):
  del argv
  try:
    selected = ([variants_lib.get(name) for name in _VARIANTS.value] if _VARIANTS.value
                else list(variants_lib.collection()))
    models = batch.parse_models(selected, _OUTPUTS.value, _COMMON.input_size.value,
                                _COMMON.precision.value)
  except pipeline.EXPORT_ERRORS as error:
    sys.exit(f"error: {errors.one_line(error)}")

  def prechecks():
    for variant in selected if _CHECKPOINT_DIR.value else ():
      local_checkpoint(_CHECKPOINT_DIR.value, variant.name)

  batch.run(models, checkpoint_for, _COMMON, prechecks)


def cli_main():
  """The `video-swin-export-all` console script."""
  app.run(main)


if __name__ == "__main__":
  cli_main()
