"""Writing one variant as a fine-tunable TF Hub feature-extractor SavedModel."""

import os
import shutil
import tempfile

from absl import logging

from hub_models import checkpoint
from hub_models import conversion
from hub_models import download
from hub_models import variants
from hub_models.backbone import VideoSwinBackbone
from hub_models.hub_module import FeatureExtractor


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
  """Exports `variant_name` to `output_dir/<name>/<version>` and returns that path.

  `checkpoint_ref` is a local path or a URL (downloaded into `cache_dir`). The SavedModel is
  written next to its final place and moved there only when complete, so a failed export leaves
  no version behind.

  Raises:
    UnknownVariantError, CheckpointError, ConversionError, DownloadError, ExportError.
  """
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
