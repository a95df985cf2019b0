r"""Exports one variant as a fine-tunable TF Hub feature-extractor SavedModel.

  python -m export.export_savedmodel --variant=swin_tiny_patch244_window877_kinetics400_1k \
      --checkpoint=PATH_OR_URL --output_dir=exports --version=1

writes `exports/<variant>/<version>/`: input `[None, 3, 32, 224, 224]` float32 RGB in [0, 1],
output the pooled feature `[None, 8C]`. The SavedModel is written next to its final place and
moved there only when complete, so a failed export leaves nothing behind.
"""

import os
import shutil
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging

from hub_models import checkpoint
from hub_models import conversion
from hub_models import download
from hub_models import variants
from hub_models.backbone import VideoSwinBackbone
from hub_models.hub_module import FeatureExtractor

_VARIANT = flags.DEFINE_string("variant", None, "Registered variant name.", required=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Official checkpoint: a local .pth path or a URL (downloaded and cached).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Root of the export tree.", required=True)
_VERSION = flags.DEFINE_integer("version", 1, "Model version (a positive integer).", lower_bound=1)
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "video_swin_checkpoints"),
    "Where downloaded checkpoints are kept, keyed by URL.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing version.")


class ExportError(RuntimeError):
  """An export that cannot proceed; the message says why in one line."""


def build_feature_extractor(variant: variants.Variant, checkpoint_path: str,
                            input_size=(32, 224, 224)) -> FeatureExtractor:
  """Reads an official checkpoint (never executing its pickle) into a FeatureExtractor."""
  state = conversion.canonical_state_dict(checkpoint.load(checkpoint_path))
  backbone = VideoSwinBackbone(variant.architecture)
  conversion.load_weights(state, variant, backbone)
  return FeatureExtractor(backbone, input_size)


def export(variant_name: str, checkpoint_ref: str, output_dir: str, version: int,
           cache_dir: str, overwrite: bool = False) -> str:
  """Exports `variant_name` to `output_dir/<name>/<version>` and returns that path."""
  variant = variants.get(variant_name)
  target = os.path.join(output_dir, variant.name, str(version))
  if os.path.exists(target) and not overwrite:
    raise ExportError(f"{target} already exists: versions are immutable (use --overwrite)")

  if download.is_url(checkpoint_ref):
    checkpoint_path = download.fetch(checkpoint_ref, cache_dir, variant.checkpoint_sha256)
  else:
    checkpoint_path = checkpoint_ref
  logging.info("converting %s from %s", variant.name, checkpoint_path)
  model = build_feature_extractor(variant, checkpoint_path)

  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{version}.staging-", dir=parent)
  try:
    logging.info("writing SavedModel for %s", variant.name)
    model.save(staging)
    if os.path.exists(target):
      shutil.rmtree(target)
    os.replace(staging, target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  logging.info("exported %s", target)
  return target


def main(argv):
  del argv
  checkpoint_ref = _CHECKPOINT.value
  try:
    variant = variants.get(_VARIANT.value)
    checkpoint_ref = checkpoint_ref or variant.checkpoint_urls[0]
    export(variant.name, checkpoint_ref, _OUTPUT_DIR.value, _VERSION.value, _CACHE_DIR.value,
           _OVERWRITE.value)
  except (variants.UnknownVariantError, checkpoint.CheckpointError, conversion.ConversionError,
          download.DownloadError, ExportError) as error:
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main)
