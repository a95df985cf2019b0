"""Building the SavedModel root of one published model (variant, output, input size, precision)
from its official checkpoint; export/pipeline.py saves, verifies, packages and publishes it."""

import tensorflow as tf

from . import published_models
from ..hub_models import checkpoint
from ..hub_models import conversion
from ..hub_models import hub_module
from ..hub_models.backbone import VideoSwinBackbone
from ..hub_models.head import ClassificationHead


def build_model(model: published_models.PublishedModel,
                checkpoint_path: str) -> hub_module.VideoModule:
  """Reads an official checkpoint (never executing its pickle) into the SavedModel root of `model`.

  The classification head is converted too when the output keeps it; otherwise its weights may
  be in the checkpoint and are left out. The root computes in `model.precision`'s dtype; its
  variables are float32 in every precision.
  """
  variant = model.variant
  compute_dtype = tf.as_dtype(model.precision.compute_dtype)
  state = conversion.canonical_state_dict(checkpoint.load(checkpoint_path))
  backbone = VideoSwinBackbone(variant.architecture, compute_dtype=compute_dtype)
  head, extra = None, {}
  if model.output.keeps_head:
    head = ClassificationHead(variant.architecture.num_features, variant.num_classes,
                              compute_dtype=compute_dtype, name="cls_head")
    extra["head"] = head
  conversion.load_weights(state, variant, backbone, head)
  return getattr(hub_module, model.output.module)(backbone, input_size=model.input_size, **extra)
