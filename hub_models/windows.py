"""Shifted-window bookkeeping for 3D (D, H, W) token grids.

Sizes are Python ints when the clip shape is fixed at trace time and int32 scalar tensors when it
is not (see `shapes.py`); the same functions serve both, and with static sizes they add no ops.
Relative-position indices and shift masks are built from a handful of TF ops instead of being
stored as constants, so a saved graph stays small whatever the window or input size.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import tensorflow as tf

from . import shapes

Size3 = Tuple[shapes.Size, shapes.Size, shapes.Size]


def effective_window(grid: Sequence[shapes.Size], window: Sequence[int],
                     shift: Sequence[int]) -> Tuple[Size3, Size3]:
  """Shrinks the window to the grid on each axis where the grid is not larger.

  Matches the official `get_window_size`: on an axis with `grid <= window` the window becomes the
  grid size and the shift becomes 0 (note the `<=`: equal sizes also disable the shift). `window`
  and `shift` are the configured ints; a run-time grid size gives run-time results on its axis,
  except that a configured shift of 0 stays a Python 0.
  """
  new_window, new_shift = list(window), list(shift)
  for axis in range(3):
    if isinstance(grid[axis], int):
      if grid[axis] <= window[axis]:
        new_window[axis] = grid[axis]
        new_shift[axis] = 0
    else:
      new_window[axis] = tf.minimum(grid[axis], window[axis])
      if shift[axis]:
        new_shift[axis] = tf.where(grid[axis] <= window[axis], 0, shift[axis])
  return tuple(new_window), tuple(new_shift)


def padded_grid(grid: Sequence[shapes.Size], window: Sequence[shapes.Size]) -> Size3:
  """The grid rounded up to a multiple of the window on each axis."""
  return tuple(-(-g // w) * w for g, w in zip(grid, window))


def partition(x: tf.Tensor, window: Size3) -> tf.Tensor:
  """Cuts `[B, D, H, W, C]` (D, H, W multiples of the window) into `[B * nW, N, C]` windows.

  Windows are ordered batch-major then (d, h, w); tokens inside a window are d-major, as in the
  official model.
  """
  _, d, h, w, c = shapes.sizes(x)
  wd, wh, ww = window
  x = tf.reshape(x, [-1, d // wd, wd, h // wh, wh, w // ww, ww, c])
  x = tf.transpose(x, [0, 1, 3, 5, 2, 4, 6, 7])
  return tf.reshape(x, [-1, wd * wh * ww, c])


def merge(windows: tf.Tensor, window: Size3, grid: Size3) -> tf.Tensor:
  """Inverse of `partition`: `[B * nW, N, C]` back to `[B, D, H, W, C]` for the padded `grid`."""
  d, h, w = grid
  wd, wh, ww = window
  c = windows.shape[-1]
  x = tf.reshape(windows, [-1, d // wd, h // wh, w // ww, wd, wh, ww, c])
  x = tf.transpose(x, [0, 1, 4, 2, 5, 3, 6, 7])
  return tf.reshape(x, [-1, d, h, w, c])


def relative_position_index(window: Sequence[int]) -> tf.Tensor:
  """Index into the bias table for every pair of tokens of a window: int32 `[N, N]`, N = prod(window).

  Token i at (d, h, w) and token j: ((d_i - d_j + Wd - 1) * (2Wh - 1) + (h_i - h_j + Wh - 1))
  * (2Ww - 1) + (w_i - w_j + Ww - 1), tokens enumerated d-major.
  """
  wd, wh, ww = window
  coords = tf.stack(tf.meshgrid(tf.range(wd), tf.range(wh), tf.range(ww), indexing="ij"))
  coords = tf.reshape(coords, [3, -1])
  rel = coords[:, :, None] - coords[:, None, :]
  return ((rel[0] + wd - 1) * (2 * wh - 1) + rel[1] + wh - 1) * (2 * ww - 1) + rel[2] + ww - 1


def _region_labels(size: int, window: int, shift: int) -> tf.Tensor:
  """Per-axis region of each position: 0, 1, 2 for the slices [:-w], [-w:-s], [-s:].

  With shift 0 the official slice(-0, None) covers the whole axis, so every position is region 2
  (also when a run-time shift turns out to be 0).
  """
  if not shapes.may_be_nonzero([shift]):
    return tf.fill([size], 2)
  positions = tf.range(size)
  labels = (tf.cast(positions >= size - window, tf.int32)
            + tf.cast(positions >= size - shift, tf.int32))
  return labels if isinstance(shift, int) else tf.where(tf.equal(shift, 0), 2, labels)


REGION_CODES = 8  # a window spans at most two regions of the rolled grid per axis


def shift_mask_factors(grid: Size3, window: Size3, shift: Size3, dtype: tf.DType = tf.float32
                       ) -> Optional[Tuple[tf.Tensor, tf.Tensor]]:
  """The official shift mask `[nW, N, N]` for the padded `grid` as two factors `(queries, keys)`,
  each `[nW, N, REGION_CODES]` of `dtype`, with `mask = queries @ keys^T`; None when no axis is
  shifted.

  The official model adds -100 (not -inf) to the attention logits of token pairs from different
  regions of the rolled grid. Along each axis a window spans at most two regions, so a token's
  region within its window is one of 8 codes (a bit per axis: is its region that of the window's
  first token). With `R` the one-hot of the codes, `queries = -100 R` and `keys = 1 - R`: their
  product is -100 across regions and exactly 0 within one. The attention appends them to q and k,
  so its QK^T matmul adds the mask (see `attention.WindowAttention`). Run-time shifts that are all 0
  give every token code 0, so a mask of exact zeros.
  """
  if not shapes.may_be_nonzero(shift):
    return None
  bits = []
  for size, width, offset in zip(grid, window, shift):
    labels = tf.reshape(_region_labels(size, width, offset), [-1, width])
    bits.append(tf.cast(tf.not_equal(labels, labels[:, :1]), tf.int32))
  d, h, w = bits
  # [windows along d, h, w, tokens along d, h, w]: windows d-major, tokens d-major, as `partition`.
  codes = (4 * d[:, None, None, :, None, None] + 2 * h[None, :, None, None, :, None]
           + w[None, None, :, None, None, :])
  tokens = window[0] * window[1] * window[2]
  regions = tf.one_hot(tf.reshape(codes, [-1, tokens]), REGION_CODES, dtype=dtype)
  return -100.0 * regions, 1.0 - regions


@dataclasses.dataclass(frozen=True)
class StageLayout:
  """How one stage's token grid is cut into windows; computed once per stage, as the official
  model does, and shared by its blocks.

  Attributes:
    grid: the stage's (D, H, W).
    window: the effective window (shrunk to the grid where the grid is not larger).
    shift: the effective shift of the stage's shifted blocks (unshifted blocks use 0).
    padded: the grid rounded up to multiples of `window`.
    mask_factors: the shifted blocks' mask as `(queries, keys)`, each `[nW, N, REGION_CODES]` in
      the attention's compute dtype (see `shift_mask_factors`), or None.
    bias_index: `[N * N]` int32 rows of the configured window's bias table for a window of
      N = prod(window) tokens.
  """

  grid: Size3
  window: Size3
  shift: Size3
  padded: Size3
  mask_factors: Optional[Tuple[tf.Tensor, tf.Tensor]]
  bias_index: tf.Tensor


def stage_layout(grid: Size3, window: Sequence[int], shift: Sequence[int],
                 dtype: tf.DType = tf.float32) -> StageLayout:
  """The layout of a stage with token `grid` and the configured `window` and half-window `shift`;
  the mask factors are built in `dtype` (the attention's compute dtype), once for the stage's blocks."""
  effective, effective_shift = effective_window(grid, window, shift)
  padded = padded_grid(grid, effective)
  tokens = effective[0] * effective[1] * effective[2]
  index = relative_position_index(window)[:tokens, :tokens]
  return StageLayout(grid, effective, effective_shift, padded,
                     shift_mask_factors(padded, effective, effective_shift, dtype),
                     tf.reshape(index, [-1]))
