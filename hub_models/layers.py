"""Small building blocks of the Video Swin backbone, each a `tf.Module` with one job.

All tensors are channels-last. Variables are stored in TensorFlow's layout (Dense kernels
`[in, out]`, Conv3D kernels `[kd, kh, kw, in, out]`); `conversion.py` maps PyTorch weights onto them.

Variables are always float32. A module built with `compute_dtype=tf.bfloat16` casts its weights to
bfloat16 inside the call, so its matmuls run as bfloat16 kernels while training still updates the
float32 variables; with the default float32 every cast is the identity and adds no op.
"""

from typing import Sequence

import tensorflow as tf

from . import shapes


def _truncated_normal(shape, stddev=0.02):
  return tf.random.truncated_normal(shape, stddev=stddev)


class Dense(tf.Module):
  """Affine map over the last axis: `[..., in]` -> `[..., out]` (PyTorch `nn.Linear`), computed and
  returned in `compute_dtype` whatever the input's float dtype."""

  def __init__(self, in_features: int, out_features: int, use_bias: bool = True,
               compute_dtype: tf.DType = tf.float32, name=None):
    super().__init__(name=name)
    self.compute_dtype = compute_dtype
    self.kernel = tf.Variable(_truncated_normal([in_features, out_features]), name="kernel")
    self.bias = tf.Variable(tf.zeros([out_features]), name="bias") if use_bias else None

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    if x.shape.rank == 2:
      return self._apply_2d(x)
    # A 2-D matmul is markedly faster on CPU than a broadcasting batch matmul.
    y = self._apply_2d(tf.reshape(x, [-1, x.shape[-1]]))
    return tf.reshape(y, shapes.reshape_target(x)[:-1] + [self.kernel.shape[-1]])

  def _apply_2d(self, x: tf.Tensor) -> tf.Tensor:
    dtype = self.compute_dtype
    y = tf.matmul(tf.cast(x, dtype), tf.cast(self.kernel, dtype))
    return tf.nn.bias_add(y, tf.cast(self.bias, dtype)) if self.bias is not None else y


class LayerNorm(tf.Module):
  """Layer normalisation over the last axis (biased variance, as PyTorch).

  Statistics and the affine map are float32 whatever the input dtype (a bfloat16 mean or variance
  over hundreds of channels loses the accuracy the rest of the model keeps); the result is returned
  in `output_dtype`, so a norm feeding bfloat16 matmuls hands them bfloat16 directly.
  """

  def __init__(self, features: int, epsilon: float, output_dtype: tf.DType = tf.float32,
               name=None):
    super().__init__(name=name)
    self.epsilon = epsilon
    self.output_dtype = output_dtype
    self.gamma = tf.Variable(tf.ones([features]), name="gamma")
    self.beta = tf.Variable(tf.zeros([features]), name="beta")

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    x = tf.cast(x, tf.float32)
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    y = (x - mean) * tf.math.rsqrt(variance + self.epsilon) * self.gamma + self.beta
    return tf.cast(y, self.output_dtype)


class Mlp(tf.Module):
  """Dense(C -> rC), exact (erf) GELU, Dense(rC -> C), all in `compute_dtype` (also the output's)."""

  def __init__(self, features: int, hidden: int, compute_dtype: tf.DType = tf.float32, name=None):
    super().__init__(name=name)
    self.fc1 = Dense(features, hidden, compute_dtype=compute_dtype, name="fc1")
    self.fc2 = Dense(hidden, features, compute_dtype=compute_dtype, name="fc2")

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    # Working on a 2-D view lets TF fuse matmul, bias and GELU into one kernel (about 2x faster
    # than a reshape between them).
    flat = tf.reshape(x, [-1, x.shape[-1]])
    y = self.fc2(tf.nn.gelu(self.fc1(flat), approximate=False))
    return tf.reshape(y, shapes.reshape_target(x))


def drop_path(x: tf.Tensor, rate: float, training: bool) -> tf.Tensor:
  """Stochastic depth: while training, zeroes whole samples of a residual branch with prob `rate`."""
  if not training or rate == 0.0:
    return x
  keep = 1.0 - rate
  shape = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
  mask = tf.floor(keep + tf.random.uniform(shape, dtype=x.dtype))
  return x / keep * mask


class PatchEmbedding(tf.Module):
  """Video `[B, D, H, W, 3]` float32 -> tokens `[B, D/pd, H/ph, W/pw, C]` (ceil), then LayerNorm,
  float32 (the residual stream's dtype).

  Each axis is zero-padded at its end up to a multiple of the patch, then a Conv3D with
  kernel = stride = patch projects every patch, in `compute_dtype`.
  """

  def __init__(self, patch_size: Sequence[int], embed_dim: int, epsilon: float, in_channels=3,
               compute_dtype: tf.DType = tf.float32, name=None):
    super().__init__(name=name)
    self.compute_dtype = compute_dtype
    self.patch_size = tuple(patch_size)
    self.kernel = tf.Variable(_truncated_normal([*self.patch_size, in_channels, embed_dim]),
                              name="kernel")
    self.bias = tf.Variable(tf.zeros([embed_dim]), name="bias")
    self.norm = LayerNorm(embed_dim, epsilon, name="norm")

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    pads = [(-size) % patch for size, patch in zip(shapes.sizes(x)[1:4], self.patch_size)]
    if shapes.may_be_nonzero(pads):
      x = tf.pad(x, [[0, 0]] + [[0, p] for p in pads] + [[0, 0]])
    dtype = self.compute_dtype
    x = tf.nn.conv3d(tf.cast(x, dtype), tf.cast(self.kernel, dtype),
                     strides=[1, *self.patch_size, 1], padding="VALID")
    return self.norm(tf.nn.bias_add(x, tf.cast(self.bias, dtype)))


class PatchMerging(tf.Module):
  """Spatial 2x2 merge: `[B, D, H, W, C]` float32 -> `[B, D, ceil(H/2), ceil(W/2), 2C]` float32.

  Odd H/W are zero-padded at the end; the four neighbours are concatenated in the official order
  (h even/w even, h odd/w even, h even/w odd, h odd/w odd), normalised, and reduced without bias
  (in `compute_dtype`).
  """

  def __init__(self, features: int, epsilon: float, compute_dtype: tf.DType = tf.float32,
               name=None):
    super().__init__(name=name)
    self.norm = LayerNorm(4 * features, epsilon, output_dtype=compute_dtype, name="norm")
    self.reduction = Dense(4 * features, 2 * features, use_bias=False,
                           compute_dtype=compute_dtype, name="reduction")

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    _, d, h, w, c = shapes.sizes(x)
    if shapes.may_be_nonzero([h % 2, w % 2]):
      x = tf.pad(x, [[0, 0], [0, 0], [0, h % 2], [0, w % 2], [0, 0]])
      h, w = h + h % 2, w + w % 2
    # One reshape/transpose instead of four strided slices (several times faster on CPU): the
    # neighbour at (h offset i, w offset j) lands at position 2j + i of the concatenation.
    x = tf.reshape(x, [-1, d, h // 2, 2, w // 2, 2, c])
    x = tf.transpose(x, [0, 1, 2, 4, 5, 3, 6])
    x = tf.reshape(x, [-1, d, h // 2, w // 2, 4 * c])
    return tf.cast(self.reduction(self.norm(x)), tf.float32)
