"""Shifted-window bookkeeping for 3D (D, H, W) token grids.

Everything here depends only on static sizes. Relative-position indices and attention masks are
built from a handful of TF ops at trace time instead of being stored as constants, so a saved graph
stays small whatever the window or input size.
"""

from typing import Optional, Sequence, Tuple

import tensorflow as tf

Size3 = Tuple[int, int, int]


def effective_window(grid: Sequence[int], window: Sequence[int],
                     shift: Sequence[int]) -> Tuple[Size3, Size3]:
  """Shrinks the window to the grid on each axis where the grid is not larger.

  Matches the official `get_window_size`: on an axis with `grid <= window` the window becomes the
  grid size and the shift becomes 0 (note the `<=`: equal sizes also disable the shift).
  """
  new_window, new_shift = list(window), list(shift)
  for axis in range(3):
    if grid[axis] <= window[axis]:
      new_window[axis] = grid[axis]
      new_shift[axis] = 0
  return tuple(new_window), tuple(new_shift)


def padded_grid(grid: Sequence[int], window: Sequence[int]) -> Size3:
  """The grid rounded up to a multiple of the window on each axis."""
  return tuple(-(-g // w) * w for g, w in zip(grid, window))


def partition(x: tf.Tensor, window: Size3) -> tf.Tensor:
  """Cuts `[B, D, H, W, C]` (D, H, W multiples of the window) into `[B * nW, N, C]` windows.

  Windows are ordered batch-major then (d, h, w); tokens inside a window are d-major, as in the
  official model.
  """
  _, d, h, w, c = x.shape
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

  With shift 0 the official slice(-0, None) covers the whole axis, so every position is region 2.
  """
  positions = tf.range(size)
  if shift == 0:
    return tf.fill([size], 2)
  return (tf.cast(positions >= size - window, tf.int32)
          + tf.cast(positions >= size - shift, tf.int32))


def shift_mask(grid: Size3, window: Size3, shift: Size3) -> Optional[tf.Tensor]:
  """Additive mask `[nW, N, N]` float32 for shifted windows over the padded `grid`, or None.

  Tokens that came from different regions of the rolled grid get -100 (not -inf, as the official
  model), others 0. Returns None when no axis is shifted.
  """
  if not any(shift):
    return None
  ld, lh, lw = (_region_labels(g, w, s) for g, w, s in zip(grid, window, shift))
  labels = ld[:, None, None] * 9 + lh[None, :, None] * 3 + lw[None, None, :]
  labels = tf.reshape(labels, [1, *grid, 1])
  labels = tf.squeeze(partition(labels, window), -1)
  different = tf.not_equal(labels[:, :, None], labels[:, None, :])
  return tf.where(different, tf.constant(-100.0), tf.constant(0.0))
