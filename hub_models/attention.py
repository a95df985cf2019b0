"""3D (shifted) window self-attention and the Swin Transformer block built on it."""

from typing import Optional, Sequence, Tuple

import tensorflow as tf

from . import layers
from . import shapes
from . import windows


class WindowAttention(tf.Module):
  """Multi-head self-attention inside windows, with a learned relative-position bias.

  The bias table is sized from the CONFIGURED window, `(2Wd-1)(2Wh-1)(2Ww-1)` rows x heads, and
  indexed with the first N x N entries of the configured window's index when the window shrinks,
  exactly as the official model does, so official weights apply at every input size.

  The matmuls, the logits (with bias and shift mask added) and the softmax are in
  `compute_dtype`.
  """

  def __init__(self, features: int, num_heads: int, window_size: Sequence[int],
               compute_dtype: tf.DType = tf.float32, name=None):
    super().__init__(name=name)
    self.compute_dtype = compute_dtype
    self.num_heads = num_heads
    self.window_size = tuple(window_size)
    self.scale = (features // num_heads) ** -0.5
    wd, wh, ww = self.window_size
    table_rows = (2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1)
    self.relative_position_bias_table = tf.Variable(
        tf.random.truncated_normal([table_rows, num_heads], stddev=0.02),
        name="relative_position_bias_table")
    self.qkv = layers.Dense(features, 3 * features, compute_dtype=compute_dtype, name="qkv")
    self.proj = layers.Dense(features, features, compute_dtype=compute_dtype, name="proj")

  def relative_position_bias(self, bias_index: tf.Tensor, tokens: shapes.Size) -> tf.Tensor:
    """Bias `[heads, 1, N, N]` (to broadcast over the windows of head-major logits) in
    `compute_dtype` from the table rows `bias_index` `[N * N]` (see `windows.StageLayout`)."""
    # Casting the small table, not the gathered N x N bias, keeps the cast cheap.
    table = tf.cast(self.relative_position_bias_table, self.compute_dtype)
    bias = tf.gather(table, bias_index)
    return tf.reshape(tf.transpose(tf.reshape(bias, [tokens, tokens, self.num_heads]), [2, 0, 1]),
                      [self.num_heads, 1, tokens, tokens])

  def __call__(self, x: tf.Tensor, bias_index: tf.Tensor,
               mask_factors: Optional[Tuple[tf.Tensor, tf.Tensor]]) -> tf.Tensor:
    """Attends within each window.

    Args:
      x: `[B * nW, N, C]` windows in `compute_dtype`, batch-major.
      bias_index: `[N * N]` int32 rows of the bias table.
      mask_factors: shifted windows' mask as `(queries, keys)`, each `[nW, N, R]` in
        `compute_dtype` (see `windows.shift_mask_factors`), or None.
    Returns:
      `[B * nW, N, C]` in `compute_dtype`.
    """
    tokens, features = shapes.sizes(x)[1], x.shape[2]
    head_dim = features // self.num_heads
    scale = tf.constant(self.scale, self.compute_dtype)
    qkv = self.qkv(tf.reshape(x, [-1, features]))
    qkv = tf.reshape(qkv, [-1, tokens, 3, self.num_heads, head_dim])
    # Head-major `[heads, B * nW, N, d]`, so that the bias broadcasts over windows as
    # `[heads, 1, N, N]`. In that form TF's remapper fuses `BatchMatMul -> Mul(scale) -> Add(bias)`
    # into one oneDNN matmul, which scales and adds the bias instead of two more passes over the
    # logits (the largest tensors of the model).
    q, k, v = tf.unstack(tf.transpose(qkv, [2, 3, 0, 1, 4]))
    if mask_factors is not None:
      # The matmul adds the mask through these extra columns, saving another such pass; the
      # queries' columns are divided by the scale the logits are multiplied by.
      q = self._with_columns(q, mask_factors[0] / scale)
      k = self._with_columns(k, mask_factors[1])
    attn = tf.matmul(q, k, transpose_b=True) * scale
    attn = tf.nn.softmax(attn + self.relative_position_bias(bias_index, tokens))
    out = tf.matmul(attn, v)
    out = tf.reshape(tf.transpose(out, [1, 2, 0, 3]), [-1, tokens, features])
    return self.proj(out)

  def _with_columns(self, x: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """`x` `[heads, B * nW, N, d]` with each window's `columns` `[nW, N, c]` appended in every
    head: `[heads, B * nW, N, d + c]`."""
    num_windows, tokens, width = shapes.sizes(columns)
    x = tf.reshape(x, [self.num_heads, -1, num_windows, tokens, x.shape[-1]])
    batch = shapes.sizes(x)[1]
    columns = tf.broadcast_to(columns[None, None],
                              [self.num_heads, batch, num_windows, tokens, width])
    x = tf.concat([x, columns], -1)
    return tf.reshape(x, [self.num_heads, -1, tokens, x.shape[-1]])


class SwinBlock(tf.Module):
  """x + Attn(LN(x)) over (shifted) windows, then x + MLP(LN(x)); `[B, D, H, W, C]` in and out."""

  def __init__(self, features: int, num_heads: int, window_size: Sequence[int], shifted: bool,
               mlp_ratio: float, drop_path_rate: float, epsilon: float,
               compute_dtype: tf.DType = tf.float32, name=None):
    super().__init__(name=name)
    self.shifted = shifted
    self.drop_path_rate = drop_path_rate
    self.norm1 = layers.LayerNorm(features, epsilon, output_dtype=compute_dtype, name="norm1")
    self.attn = WindowAttention(features, num_heads, window_size, compute_dtype, name="attn")
    self.norm2 = layers.LayerNorm(features, epsilon, output_dtype=compute_dtype, name="norm2")
    self.mlp = layers.Mlp(features, int(features * mlp_ratio), compute_dtype, name="mlp")

  def __call__(self, x: tf.Tensor, layout: windows.StageLayout,
               training: bool = False) -> tf.Tensor:
    """`x` is the float32 residual stream; the two branches compute in `compute_dtype` (padding,
    rolls and window partitions move half the bytes in bfloat16) and are added back in float32.
    `layout` is the stage's (see `windows.stage_layout`); unshifted blocks ignore its shift."""
    grid, window, padded = layout.grid, layout.window, layout.padded
    shift = layout.shift if self.shifted else (0, 0, 0)
    # With run-time sizes these are taken unconditionally: padding by 0 and rolling by 0 are exact.
    pad = shapes.may_differ(padded, grid)
    shifted = shapes.may_be_nonzero(shift)

    y = self.norm1(x)
    # Padding comes after the norm and padded tokens stay visible as keys, as in the official model.
    if pad:
      y = tf.pad(y, [[0, 0]] + [[0, p - g] for p, g in zip(padded, grid)] + [[0, 0]])
    if shifted:
      y = tf.roll(y, shift=[-s for s in shift], axis=[1, 2, 3])
    y = self.attn(windows.partition(y, window), layout.bias_index,
                  layout.mask_factors if shifted else None)
    y = windows.merge(y, window, padded)
    if shifted:
      y = tf.roll(y, shift=list(shift), axis=[1, 2, 3])
    if pad:
      y = y[:, :grid[0], :grid[1], :grid[2]]
    x = x + layers.drop_path(tf.cast(y, x.dtype), self.drop_path_rate, training)
    y = tf.cast(self.mlp(self.norm2(x)), x.dtype)
    return x + layers.drop_path(y, self.drop_path_rate, training)
