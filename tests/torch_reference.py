"""The independent reference: torchvision's `SwinTransformer3d`, and checkpoints made from it.

torchvision 0.28's wheel is a CUDA build; on CPU-only torch its import fails because the schemas of
its detection ops are missing. Defining those schemas first lets the pure-PyTorch video models load.
"""

import functools

import numpy as np
import torch

from video_swin_hub.hub_models.variants import Architecture

_MISSING_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


@functools.lru_cache(None)
def torchvision_video_swin():
  """torchvision's `SwinTransformer3d` class, imported on CPU-only torch."""
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
  except RuntimeError:
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _MISSING_SCHEMAS.values():
      library.define(schema)
    torchvision_video_swin.library = library  # keep the registrations alive
    import torchvision  # pylint: disable=import-outside-toplevel
  return torchvision.models.video.swin_transformer.SwinTransformer3d


def reference_model(arch: Architecture, num_classes: int, seed: int = 0) -> torch.nn.Module:
  """A random-weight torchvision model of `arch` in eval mode.

  Every LayerNorm and bias table is perturbed away from its default so that a conversion that
  skipped or swapped them would show.
  """
  torch.manual_seed(seed)
  model = torchvision_video_swin()(
      patch_size=list(arch.patch_size), embed_dim=arch.embed_dim, depths=list(arch.depths),
      num_heads=list(arch.num_heads), window_size=list(arch.window_size),
      mlp_ratio=arch.mlp_ratio, stochastic_depth_prob=arch.drop_path_rate,
      num_classes=num_classes)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        param.copy_(1.0 + 0.2 * torch.randn_like(param))
      elif name.endswith("bias") or "relative_position_bias_table" in name:
        param.copy_(0.2 * torch.randn_like(param))
  return model.eval()


def torchvision_to_official(state: dict) -> dict:
  """Renames torchvision keys to the official Video-Swin-Transformer layout."""
  official = {}
  for key, value in state.items():
    parts = key.split(".")
    if parts[0] == "features":
      index = int(parts[1])
      if index % 2 == 0:
        rest = ".".join(parts[3:]).replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
        key = f"backbone.layers.{index // 2}.blocks.{parts[2]}.{rest}"
      else:
        key = f"backbone.layers.{index // 2}.downsample.{'.'.join(parts[2:])}"
    elif parts[0] == "head":
      key = "cls_head.fc_cls." + parts[1]
    else:
      key = "backbone." + key
    official[key] = value
  return official


def save_official(model: torch.nn.Module, path, meta=None) -> None:
  """Writes `model` as the official repo does: {'meta': ..., 'state_dict': backbone./cls_head.}."""
  payload = {"state_dict": torchvision_to_official(model.state_dict())}
  if meta is not None:
    payload["meta"] = meta
  torch.save(payload, path)


def reference_outputs(model: torch.nn.Module, video: np.ndarray):
  """(pooled features [B, 8C], logits [B, K]) for a normalised video `[B, 3, T, H, W]`."""
  with torch.no_grad():
    x = model.norm(model.features(model.patch_embed(torch.from_numpy(video))))
    pooled = x.mean(dim=(1, 2, 3))
    return pooled.numpy(), model.head(pooled).numpy()
