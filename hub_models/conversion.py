"""Official PyTorch weights -> the TensorFlow model, with strict checks.

`canonical_state_dict` brings the layouts we accept (official Video-Swin-Transformer, mmaction2 1.x,
torchvision `swin3d_*`, a bare backbone state dict) to the official key names. `load_weights` then
checks every tensor against the variant (presence, leftovers, shapes, class count, window, stored
relative-position index) and assigns them all only when every check passed.
"""

import re
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from . import windows
from .backbone import VideoSwinBackbone
from .head import ClassificationHead
from .variants import Variant


class ConversionError(ValueError):
  """A checkpoint does not fit the variant; the message names the key and both shapes."""


_Transform = Callable[[np.ndarray], np.ndarray]


def _same(array: np.ndarray) -> np.ndarray:
  return array


def _linear(weight: np.ndarray) -> np.ndarray:
  # torch Linear [out, in] -> TF kernel [in, out]
  return weight.T


def _conv3d(weight: np.ndarray) -> np.ndarray:
  # torch Conv3d [out, in, kd, kh, kw] -> TF Conv3D [kd, kh, kw, in, out]
  return weight.transpose(2, 3, 4, 1, 0)


def _torchvision_key(key: str) -> str:
  """Renames one torchvision `swin3d_*` key to the official layout."""
  match = re.match(r"features\.(\d+)\.(.*)$", key)
  if match:
    index, rest = int(match.group(1)), match.group(2)
    if index % 2 == 0:
      block, rest = rest.split(".", 1)
      rest = rest.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
      return f"backbone.layers.{index // 2}.blocks.{block}.{rest}"
    return f"backbone.layers.{index // 2}.downsample.{rest}"
  if key.startswith("head."):
    return "cls_head.fc_cls." + key[len("head."):]
  return "backbone." + key


def canonical_state_dict(checkpoint) -> Dict[str, np.ndarray]:
  """The checkpoint's tensors under official key names (`backbone.*`, `cls_head.fc_cls.*`).

  Args:
    checkpoint: what `checkpoint.load` returned: a dict holding `state_dict` (official, mmaction2),
      or a bare state dict (official keys, a backbone without prefix, or torchvision's layout).
  Raises:
    ConversionError: when no state dict of a known layout is found.
  """
  if not isinstance(checkpoint, Mapping):
    raise ConversionError(f"expected a dict of tensors, found {type(checkpoint).__name__}")
  state = checkpoint.get("state_dict", checkpoint)
  if not isinstance(state, Mapping):
    raise ConversionError(f"'state_dict' is a {type(state).__name__}, not a dict of tensors")
  tensors = {}
  for key, value in state.items():
    if not isinstance(value, np.ndarray):
      raise ConversionError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
    tensors[key[len("module."):] if key.startswith("module.") else key] = value

  if any(key.startswith("features.") for key in tensors):
    return {_torchvision_key(key): value for key, value in tensors.items()}
  if any(key.startswith(("backbone.", "cls_head.")) for key in tensors):
    # mmaction2 1.x calls the final norm `norm3`.
    return {re.sub(r"^backbone\.norm3\.", "backbone.norm.", key): value
            for key, value in tensors.items()}
  if any(key.startswith(("patch_embed.", "layers.")) for key in tensors):
    return {"backbone." + key: value for key, value in tensors.items()}
  raise ConversionError(
      "no Video Swin weights found: expected keys like 'backbone.patch_embed.proj.weight', "
      f"'patch_embed.proj.weight' or 'features.0.0.norm1.weight', got e.g. {sorted(tensors)[:3]}")


def _dense(prefix: str, dense) -> Iterator[Tuple[str, tf.Variable, _Transform]]:
  yield f"{prefix}.weight", dense.kernel, _linear
  if dense.bias is not None:
    yield f"{prefix}.bias", dense.bias, _same


def _norm(prefix: str, norm) -> Iterator[Tuple[str, tf.Variable, _Transform]]:
  yield f"{prefix}.weight", norm.gamma, _same
  yield f"{prefix}.bias", norm.beta, _same


def _backbone_targets(backbone: VideoSwinBackbone):
  """(official key, TF variable, torch->TF transform) for every backbone parameter."""
  embed = backbone.patch_embed
  yield "backbone.patch_embed.proj.weight", embed.kernel, _conv3d
  yield "backbone.patch_embed.proj.bias", embed.bias, _same
  yield from _norm("backbone.patch_embed.norm", embed.norm)
  for s, stage in enumerate(backbone.stages):
    for b, block in enumerate(stage.blocks):
      prefix = f"backbone.layers.{s}.blocks.{b}"
      yield from _norm(f"{prefix}.norm1", block.norm1)
      yield (f"{prefix}.attn.relative_position_bias_table",
             block.attn.relative_position_bias_table, _same)
      yield from _dense(f"{prefix}.attn.qkv", block.attn.qkv)
      yield from _dense(f"{prefix}.attn.proj", block.attn.proj)
      yield from _norm(f"{prefix}.norm2", block.norm2)
      yield from _dense(f"{prefix}.mlp.fc1", block.mlp.fc1)
      yield from _dense(f"{prefix}.mlp.fc2", block.mlp.fc2)
    if stage.downsample is not None:
      yield from _norm(f"backbone.layers.{s}.downsample.norm", stage.downsample.norm)
      yield from _dense(f"backbone.layers.{s}.downsample.reduction", stage.downsample.reduction)
  yield from _norm("backbone.norm", backbone.norm)


def _check_classes(state: Mapping[str, np.ndarray], variant: Variant) -> None:
  weight = state.get("cls_head.fc_cls.weight")
  if weight is not None and weight.ndim == 2 and weight.shape[0] != variant.num_classes:
    raise ConversionError(
        f"cls_head.fc_cls.weight has shape {list(weight.shape)}: the checkpoint has "
        f"{weight.shape[0]} classes but variant {variant.name} has {variant.num_classes}")


def _check_relative_index(key: str, stored: np.ndarray, expected: np.ndarray) -> None:
  if stored.size != expected.size:
    raise ConversionError(
        f"{key} has shape {list(stored.shape)}, expected {list(expected.shape)} "
        "(the checkpoint was trained with another window size)")
  if not np.array_equal(stored.reshape(expected.shape), expected):
    raise ConversionError(
        f"{key} differs from the index recomputed for the window: the checkpoint's token order "
        "or window is not the official one")


def load_weights(state: Mapping[str, np.ndarray], variant: Variant, backbone: VideoSwinBackbone,
                 head: Optional[ClassificationHead] = None) -> None:
  """Checks `state` (official key names) against `variant` and assigns it to the TF modules.

  Nothing is assigned unless every check passes. The head weights are required when `head` is
  given and may be present (and are then ignored) when it is not, but their class count must
  still match the variant.

  Raises:
    ConversionError: naming the first offending key with the expected and the found shape.
  """
  _check_classes(state, variant)
  targets = list(_backbone_targets(backbone))
  if head is not None:
    targets += list(_dense("cls_head.fc_cls", head.fc_cls))

  window = variant.architecture.window_size
  index_keys = {key for key in state if key.endswith(".attn.relative_position_index")}
  if index_keys:
    expected_index = windows.relative_position_index(window).numpy()
    for key in sorted(index_keys):
      _check_relative_index(key, state[key], expected_index)

  values = []
  for key, variable, transform in targets:
    if key not in state:
      raise ConversionError(f"missing key {key} (variant {variant.name})")
    expected = _torch_shape(variable.shape, transform)
    if list(state[key].shape) != expected:
      hint = ""
      if key.endswith("relative_position_bias_table"):
        hint = (f" (a window of {list(window)} needs {variant.architecture.bias_table_size} rows:"
                " the checkpoint was trained with another window size)")
      raise ConversionError(
          f"{key} has shape {list(state[key].shape)}, variant {variant.name} expects "
          f"{expected}{hint}")
    values.append((variable, transform(state[key])))

  used = {key for key, _, _ in targets} | index_keys
  leftovers = sorted(key for key in state if key not in used
                     and not (head is None and key.startswith("cls_head.")))
  if leftovers:
    raise ConversionError(
        f"unexpected key {leftovers[0]} with shape {list(state[leftovers[0]].shape)}"
        f" ({len(leftovers)} unexpected in all) for variant {variant.name}")

  for variable, array in values:
    variable.assign(array.astype(np.float32))


def _torch_shape(tf_shape, transform: _Transform):
  """The PyTorch shape that becomes `tf_shape` under `transform`."""
  if transform is _linear:
    return list(reversed(tf_shape))
  if transform is _conv3d:
    kd, kh, kw, cin, cout = tf_shape
    return [cout, cin, kd, kh, kw]
  return list(tf_shape)
