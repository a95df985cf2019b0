"""Window sizing, relative-position indices and shift masks against torchvision's own helpers."""

import importlib

import numpy as np
import pytest
import tensorflow as tf

import torch_reference
from video_swin_hub.hub_models import windows


@pytest.fixture(scope="module")
def tv():
  torch_reference.torchvision_video_swin()
  return importlib.import_module("torchvision.models.video.swin_transformer")


def test_window_shrinks_when_grid_is_not_larger(tv):
  for grid in [(16, 56, 56), (16, 7, 7), (8, 14, 14), (4, 3, 9), (9, 8, 7)]:
    want = tv._get_window_and_shift_size([4, 3, 3], list(grid), [8, 7, 7])  # pylint: disable=protected-access
    got = windows.effective_window(grid, (8, 7, 7), (4, 3, 3))
    assert got == tuple(tuple(w) for w in want)
  # grid == window: the window stays but the shift goes (the `<=` of the official code).
  assert windows.effective_window((8, 7, 7), (8, 7, 7), (4, 3, 3)) == ((8, 7, 7), (0, 0, 0))


@pytest.mark.parametrize("window", [(8, 7, 7), (16, 7, 7), (2, 3, 4)])
def test_relative_position_index_equals_torchvision_buffer(tv, window):
  module = tv.ShiftedWindowAttention3d(8, list(window), [0, 0, 0], 1)
  np.testing.assert_array_equal(windows.relative_position_index(window).numpy(),
                                module.relative_position_index.numpy())


@pytest.mark.parametrize("grid,window,shift", [
    ((16, 56, 56), (8, 7, 7), (4, 3, 3)),
    ((16, 14, 14), (8, 7, 7), (4, 3, 3)),
    ((16, 7, 7), (8, 7, 7), (4, 0, 0)),
    ((32, 14, 14), (16, 7, 7), (0, 3, 3)),
    ((6, 9, 10), (3, 3, 5), (1, 1, 2)),
])
def test_shift_mask_factors_give_torchvision_mask(tv, grid, window, shift):
  import torch  # pylint: disable=import-outside-toplevel
  want = tv._compute_attention_mask_3d(torch.zeros(1), grid, window, shift)  # pylint: disable=protected-access
  np.testing.assert_array_equal(mask(windows.shift_mask_factors(grid, window, shift)), want.numpy())


def test_no_mask_without_shift():
  assert windows.shift_mask_factors((16, 56, 56), (8, 7, 7), (0, 0, 0)) is None


def mask(factors) -> np.ndarray:
  """The additive mask `[nW, N, N]` that the attention's extra q and k columns add to its logits."""
  queries, keys = (f.numpy() for f in factors)
  assert queries.shape == keys.shape and queries.shape[-1] == windows.REGION_CODES
  return np.einsum("wnc,wmc->wnm", queries, keys)


def test_partition_and_merge_are_inverse():
  x = tf.random.normal([2, 16, 14, 21, 5])
  parts = windows.partition(x, (8, 7, 7))
  assert parts.shape == (2 * 2 * 2 * 3, 392, 5)
  # d-major token order inside a window, batch-major window order.
  np.testing.assert_array_equal(parts[1, 0].numpy(), x[0, 0, 0, 7].numpy())
  np.testing.assert_array_equal(parts[0, 1].numpy(), x[0, 0, 0, 1].numpy())
  np.testing.assert_array_equal(parts[0, 49].numpy(), x[0, 1, 0, 0].numpy())
  np.testing.assert_array_equal(windows.merge(parts, (8, 7, 7), (16, 14, 21)).numpy(), x.numpy())


@pytest.mark.parametrize("grid", [(16, 56, 56), (16, 7, 7), (8, 7, 7), (4, 3, 9), (9, 8, 13)])
def test_layout_from_run_time_sizes_equals_torchvision(tv, grid):
  """The same bookkeeping with the grid known only at run time (the dynamic-shape trace)."""
  import torch  # pylint: disable=import-outside-toplevel
  window, shift = tv._get_window_and_shift_size([4, 3, 3], list(grid), [8, 7, 7])  # pylint: disable=protected-access
  layout = windows.stage_layout(tuple(tf.constant(g) for g in grid), (8, 7, 7), (4, 3, 3))
  assert [int(w) for w in layout.window] == window
  assert [int(s) for s in layout.shift] == shift
  padded = [-(-g // w) * w for g, w in zip(grid, window)]
  assert [int(p) for p in layout.padded] == padded
  tokens = int(np.prod(window))
  np.testing.assert_array_equal(
      layout.bias_index.numpy(),
      windows.relative_position_index((8, 7, 7)).numpy()[:tokens, :tokens].reshape(-1))
  if any(shift):
    want = tv._compute_attention_mask_3d(torch.zeros(1), padded, window, shift).numpy()  # pylint: disable=protected-access
  else:  # the official model adds no mask; a run-time zero shift gives an all-zero one
    want = np.zeros([int(np.prod(padded)) // tokens, tokens, tokens], np.float32)
  np.testing.assert_array_equal(mask(layout.mask_factors), want)
