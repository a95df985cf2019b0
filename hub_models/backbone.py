"""The Video Swin backbone: patch embedding, four stages of Swin blocks, final LayerNorm."""

import numpy as np
import tensorflow as tf

from . import attention
from . import layers
from . import shapes
from . import windows
from .variants import Architecture


class Stage(tf.Module):
  """A run of Swin blocks (even ones unshifted, odd ones shifted by half a window), then an
  optional spatial patch merge. `[B, D, H, W, C]` -> `[B, D, H', W', C']`."""

  def __init__(self, features: int, depth: int, num_heads: int, arch: Architecture,
               drop_path_rates, downsample: bool, compute_dtype: tf.DType = tf.float32,
               name=None):
    super().__init__(name=name)
    self.window_size = arch.window_size
    self.compute_dtype = compute_dtype
    self.blocks = [
        attention.SwinBlock(features, num_heads, arch.window_size, shifted=i % 2 == 1,
                            mlp_ratio=arch.mlp_ratio, drop_path_rate=drop_path_rates[i],
                            epsilon=arch.layer_norm_epsilon, compute_dtype=compute_dtype,
                            name=f"block{i}")
        for i in range(depth)
    ]
    self.downsample = (layers.PatchMerging(features, arch.layer_norm_epsilon, compute_dtype,
                                           name="downsample")
                       if downsample else None)

  def __call__(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
    half = tuple(w // 2 for w in self.window_size)
    layout = windows.stage_layout(shapes.sizes(x)[1:4], self.window_size, half,
                                  dtype=self.compute_dtype)
    for block in self.blocks:
      x = block(x, layout, training=training)
    return self.downsample(x) if self.downsample is not None else x


class VideoSwinBackbone(tf.Module):
  """Video Swin Transformer backbone (official `SwinTransformer3D`), without any head.

  Call with a normalised video `[B, T, H, W, 3]` float32 (any T, H, W, static or run-time; any B).
  Returns the final-norm feature map `[B, ceil(T/2), ceil(H/32), ceil(W/32), 8C]` float32 (ceil at each
  halving). `training=True` enables stochastic depth.

  `compute_dtype` (float32 or bfloat16) is what the matmuls, the patch-embedding convolution, the
  attention logits and softmax and the MLP compute in. Variables, LayerNorm statistics, the
  residual stream between blocks and the output stay float32 whatever it is.
  """

  def __init__(self, arch: Architecture, compute_dtype: tf.DType = tf.float32, name=None):
    super().__init__(name=name)
    self.arch = arch
    self.compute_dtype = tf.as_dtype(compute_dtype)
    self.patch_embed = layers.PatchEmbedding(arch.patch_size, arch.embed_dim,
                                             arch.layer_norm_epsilon,
                                             compute_dtype=self.compute_dtype, name="patch_embed")
    rates = np.linspace(0.0, arch.drop_path_rate, sum(arch.depths)).tolist()
    self.stages = []
    for i, (depth, heads) in enumerate(zip(arch.depths, arch.num_heads)):
      start = sum(arch.depths[:i])
      self.stages.append(Stage(arch.embed_dim * 2**i, depth, heads, arch,
                               rates[start:start + depth],
                               downsample=i < len(arch.depths) - 1,
                               compute_dtype=self.compute_dtype, name=f"stage{i}"))
    self.norm = layers.LayerNorm(arch.num_features, arch.layer_norm_epsilon, name="norm")

  def __call__(self, video: tf.Tensor, training: bool = False) -> tf.Tensor:
    x = self.patch_embed(video)
    for stage in self.stages:
      x = stage(x, training=training)
    return self.norm(x)


def pool(feature_map: tf.Tensor) -> tf.Tensor:
  """The pooled feature: mean over (D, H, W) of `[B, D, H, W, C]`, giving `[B, C]`."""
  return tf.reduce_mean(feature_map, axis=[1, 2, 3])
