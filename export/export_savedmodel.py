r"""Exports one variant with one output: `export_all` for a single Hub model, from any checkpoint.

  python -m video_swin_hub.export.export_savedmodel --variant=NAME --output_dir=DEST [--checkpoint=PATH_OR_URL] \
      [--output=features|logits|feature_map] [--input_size=32,224,224] [--version=1] \
      [--overwrite] [--publisher=ID] [--asset_base_url=URL] [--cache_dir=CACHE]

Same pipeline, verification, archive, manifest, destinations and rules as export_all (see
export/batch.py); only the checkpoint may be any local file or URL (default: the variant's
official URL, downloaded and cached).
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
_VARIANT = flags.DEFINE_string("variant", None, "Registered variant name.", required=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None,
    "Official checkpoint: a local .pth path or a URL. Default: the variant's official URL.")
_OUTPUT = flags.DEFINE_enum(
    "output", published_models.DEFAULT_OUTPUT, list(published_models.OUTPUTS),
    "What the model returns: the pooled feature, the classifier's logits or the final map.")


def main(argv):
  del argv
  try:
    variant = variants_lib.get(_VARIANT.value)
    models = batch.parse_models([variant], [_OUTPUT.value], _COMMON.input_size.value,
                                _COMMON.precision.value)
  except pipeline.EXPORT_ERRORS as error:
    sys.exit(f"error: {errors.one_line(error)}")
  reference = _CHECKPOINT.value or variant.checkpoint_urls[0]

  def prechecks():
    if not download.is_url(reference) and not os.path.isfile(reference):
      raise errors.ExportError(f"checkpoint {reference} not found")

  def checkpoint_for(_):
    path = download.fetch(reference, _COMMON.cache_dir.value, variant.checkpoint_sha256)
    return pipeline.Checkpoint(path, reference,
                               download.trust(reference, variant.checkpoint_sha256))

  batch.run(models, checkpoint_for, _COMMON, prechecks)


def cli_main():
  """The `video-swin-export-savedmodel` console script."""
  app.run(main)


if __name__ == "__main__":
  cli_main()
