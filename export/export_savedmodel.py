r"""Exports one variant as a fine-tunable TF Hub SavedModel.

  python -m export.export_savedmodel --variant=swin_tiny_patch244_window877_kinetics400_1k \
      --checkpoint=PATH_OR_URL --output_dir=exports --version=1 \
      [--output=features|logits|feature_map] [--input_size=32,224,224]

writes `exports/<model>/<version>/`: input `[None, 3, 32, 224, 224]` float32 RGB in [0, 1],
output the pooled feature `[None, 8C]` by default. `<model>` is the variant name, with a suffix
for another output or input size (see export/published_models.py). Without --checkpoint the
official checkpoint is downloaded (cached by URL, sha256-checked). Bad input ends with a one-line
`error: ...` and nothing written.
"""

import os
import sys

from absl import app
from absl import flags

from export import published_models
from export import savedmodel
from hub_models import checkpoint
from hub_models import conversion
from hub_models import download
from hub_models import variants

_VARIANT = flags.DEFINE_string("variant", None, "Registered variant name.", required=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None,
    "Official checkpoint: a local .pth path or a URL. Default: the variant's official URL.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Root of the export tree.", required=True)
_VERSION = flags.DEFINE_integer("version", 1, "Model version (a positive integer).", lower_bound=1)
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "video_swin_checkpoints"),
    "Where downloaded checkpoints are kept, keyed by URL.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing version.")
_OUTPUT = flags.DEFINE_enum(
    "output", published_models.DEFAULT_OUTPUT, list(published_models.OUTPUTS),
    "What the model returns: the pooled feature, the classifier's logits or the final map.")
_INPUT_SIZE = flags.DEFINE_list("input_size", ["32", "224", "224"],
                                "Frames,height,width of the exported input.")


def main(argv):
  del argv
  try:
    variant = variants.get(_VARIANT.value)
    model = published_models.PublishedModel(
        variant, published_models.get_output(_OUTPUT.value),
        published_models.parse_input_size(_INPUT_SIZE.value))
    savedmodel.export(model, _CHECKPOINT.value or variant.checkpoint_urls[0],
                      _OUTPUT_DIR.value, _VERSION.value, _CACHE_DIR.value, _OVERWRITE.value)
  except (variants.UnknownVariantError, published_models.InputSizeError,
          checkpoint.CheckpointError, conversion.ConversionError, download.DownloadError,
          savedmodel.ExportError) as error:
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main)
