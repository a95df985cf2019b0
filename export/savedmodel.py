"""Writing one published model (variant, output, input size) as a fine-tunable TF Hub SavedModel."""

import os
import shutil
import tempfile

from absl import logging

from export import published_models
from hub_models import checkpoint
from hub_models import conversion
from hub_models import download
from hub_models import hub_module
from hub_models.backbone import VideoSwinBackbone
from hub_models.head import ClassificationHead


class ExportError(RuntimeError):
  """An export that cannot proceed; the message says why in one line."""


def build_model(model: published_models.PublishedModel,
                checkpoint_path: str) -> hub_module.VideoModule:
  """Reads an official checkpoint (never executing its pickle) into the SavedModel root of `model`.

  The classification head is converted too when the output keeps it; otherwise its weights may
  be in the checkpoint and are left out.
  """
  variant = model.variant
  state = conversion.canonical_state_dict(checkpoint.load(checkpoint_path))
  backbone = VideoSwinBackbone(variant.architecture)
  head, extra = None, {}
  if model.output.keeps_head:
    head = ClassificationHead(variant.architecture.num_features, variant.num_classes,
                              name="cls_head")
    extra["head"] = head
  conversion.load_weights(state, variant, backbone, head)
  return getattr(hub_module, model.output.module)(backbone, input_size=model.input_size, **extra)


def export(model: published_models.PublishedModel, checkpoint_ref: str, output_dir: str,
           version: int, cache_dir: str, overwrite: bool = False) -> str:
  """Exports `model` to `output_dir/<model.name>/<version>` and returns that path.

  `checkpoint_ref` is a local path or a URL (downloaded into `cache_dir`). The SavedModel is
  written next to its final place and moved there only when complete, so a failed export leaves
  no version behind.

  Raises:
    CheckpointError, ConversionError, DownloadError, ExportError.
  """
  variant = model.variant
  target = os.path.join(output_dir, model.name, str(version))
  if os.path.exists(target) and not overwrite:
    raise ExportError(f"{target} already exists: versions are immutable (use --overwrite)")

  if download.is_url(checkpoint_ref):
    checkpoint_path = download.fetch(checkpoint_ref, cache_dir, variant.checkpoint_sha256)
  else:
    checkpoint_path = checkpoint_ref
  logging.info("converting %s from %s", variant.name, checkpoint_path)
  root = build_model(model, checkpoint_path)

  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{version}.staging-", dir=parent)
  try:
    logging.info("writing SavedModel for %s", model.name)
    root.save(staging)
    if os.path.exists(target):
      shutil.rmtree(target)
    os.replace(staging, target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  logging.info("exported %s", target)
  return target
