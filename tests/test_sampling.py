"""Test-time view sampling: frame indices per protocol, resize and crop geometry, and the pixels of
the views handed to the model."""

import numpy as np
import pytest
import tensorflow as tf

from video_swin_hub.extraction import preprocess
from video_swin_hub.extraction import sampling


def kinetics_expected(starts, clip_len=8, interval=2, num_frames=None):
  rows = [[s + interval * i for i in range(clip_len)] for s in starts]
  return np.array(rows) % (num_frames or 10**9)


def test_kinetics_clips_are_evenly_spaced():
  # 100 frames, clips of 8 x interval 2 (16 frames): 85 starts cut into 4 segments of 21.25;
  # starts at the segment middles 10.6, 31.9, 53.1, 74.4, rounded down.
  got = sampling.kinetics_indices(100, clip_len=8, frame_interval=2, num_clips=4)
  np.testing.assert_array_equal(got, kinetics_expected([10, 31, 53, 74]))
  # The papers' setting on a 10 s, 30 fps video: 32 x 2, 4 clips; segments of 59.25.
  got = sampling.kinetics_indices(300, clip_len=32, frame_interval=2, num_clips=4)
  np.testing.assert_array_equal(got, kinetics_expected([29, 88, 148, 207], clip_len=32))
  assert got.shape == (4, 32) and got.dtype == np.int64 and got.max() == 207 + 62


def test_kinetics_short_videos_start_at_zero_and_loop():
  # Exactly one clip span (16 frames): one possible start, 0.25 of a segment each: all start at 0.
  np.testing.assert_array_equal(sampling.kinetics_indices(16, 8, 2, 4),
                                kinetics_expected([0, 0, 0, 0]))
  # 15 frames: no clip fits, all start at 0, and index 14 is still inside the video.
  np.testing.assert_array_equal(sampling.kinetics_indices(15, 8, 2, 2), kinetics_expected([0, 0]))
  # 10 frames: indices 10, 12, 14 wrap to 0, 2, 4.
  np.testing.assert_array_equal(sampling.kinetics_indices(10, 8, 2, 1),
                                [[0, 2, 4, 6, 8, 0, 2, 4]])
  # A single frame is repeated.
  np.testing.assert_array_equal(sampling.kinetics_indices(1, 8, 2, 2), np.zeros([2, 8]))
  with pytest.raises(sampling.SamplingError):
    sampling.kinetics_indices(0, 8, 2, 2)


def test_uniform_takes_segment_middles():
  # 100 frames into 8 segments of 99/8 = 12.375: bounds 0 12 25 37 50 62 74 87 99 (49.5 rounds
  # to the even 50), middles rounded down.
  np.testing.assert_array_equal(sampling.uniform_indices(100, 8),
                                [[6, 18, 31, 43, 56, 68, 80, 93]])
  # Fewer frames than the clip: frames repeat. Segments of 0.5: bounds 0 0 1 2 2 2 3 4 4.
  np.testing.assert_array_equal(sampling.uniform_indices(5, 8), [[0, 0, 1, 2, 2, 2, 3, 4]])
  np.testing.assert_array_equal(sampling.uniform_indices(1, 4), [[0, 0, 0, 0]])
  with pytest.raises(sampling.SamplingError):
    sampling.uniform_indices(0, 8)


def test_frame_indices_follows_the_protocol():
  kinetics = sampling.Sampling("kinetics", 8, (56, 56), num_clips=2, num_crops=3, short_side=56)
  ssv2 = sampling.Sampling("ssv2", 8, (56, 56), num_clips=1, num_crops=3, short_side=56)
  np.testing.assert_array_equal(sampling.frame_indices(kinetics, 100),
                                sampling.kinetics_indices(100, 8, 2, 2))
  np.testing.assert_array_equal(sampling.frame_indices(ssv2, 100), sampling.uniform_indices(100, 8))
  assert kinetics.num_views == 6 and ssv2.num_views == 3


@pytest.mark.parametrize("changes, message", [
    (dict(protocol="ucf"), "unknown protocol"),
    (dict(protocol="ssv2", num_clips=4), "takes 1 clip"),
    (dict(num_crops=2), "num_crops must be 1 or 3"),
    (dict(short_side=48), "smaller than the model's 56x56 crop"),
])
def test_bad_settings_are_refused(changes, message):
  settings = dict(protocol="kinetics", clip_len=8, crop_size=(56, 56), num_clips=4, num_crops=3,
                  short_side=56)
  settings.update(changes)
  with pytest.raises(sampling.SamplingError, match=message):
    sampling.Sampling(**settings)


def test_resized_size_scales_the_short_side():
  assert sampling.resized_size(240, 320, 224) == (224, 299)  # 298.67 rounds up
  assert sampling.resized_size(320, 240, 224) == (299, 224)
  assert sampling.resized_size(48, 64, 56) == (56, 75)  # 74.67
  assert sampling.resized_size(100, 100, 224) == (224, 224)
  assert sampling.resized_size(256, 340, 256) == (256, 340)


def test_crop_offsets():
  # Landscape: left, centre, right; centred vertically.
  assert sampling.crop_offsets(56, 75, (56, 56), 3) == [(0, 0), (0, 9), (0, 18)]
  assert sampling.crop_offsets(56, 75, (56, 56), 1) == [(0, 9)]
  # Portrait: top, centre, bottom.
  assert sampling.crop_offsets(75, 56, (56, 56), 3) == [(0, 0), (9, 0), (18, 0)]
  # Single-view validation setting: short side 256, centre crop 224.
  assert sampling.crop_offsets(256, 340, (224, 224), 1) == [(16, 58)]
  with pytest.raises(sampling.SamplingError):
    sampling.crop_offsets(48, 64, (56, 56), 1)


def coordinate_frames(num_frames, height, width):
  """uint8 frames whose red is the column, green the row and blue the frame index."""
  frames = np.zeros([num_frames, height, width, 3], np.uint8)
  frames[..., 0] = np.arange(width)[None, None, :]
  frames[..., 1] = np.arange(height)[None, :, None]
  frames[..., 2] = np.arange(num_frames)[:, None, None]
  return frames


def test_views_without_resize_are_exact_crops():
  # 40 frames of 56x80 with short side 56: no resize, so crops are exact pixels.
  frames = coordinate_frames(40, 56, 80)
  settings = sampling.Sampling("kinetics", 8, (56, 56), num_clips=2, num_crops=3, short_side=56)
  views = preprocess.views(frames, settings)
  assert views.shape == (6, 3, 8, 56, 56) and views.dtype == np.float32
  indices = sampling.kinetics_indices(40, 8, 2, 2)
  for clip in range(2):
    for crop, left in enumerate([0, 12, 24]):
      view = views[clip * 3 + crop]  # clip-major
      want = frames[indices[clip], :, left:left + 56].astype(np.float32) / 255
      np.testing.assert_array_equal(view, want.transpose(3, 0, 1, 2))
  # The centre crop of a single view: red starts at column 12, blue is the sampled frame.
  centre = preprocess.views(frames, sampling.Sampling("kinetics", 8, (56, 56), 1, 1, 56))
  assert centre.shape == (1, 3, 8, 56, 56)
  np.testing.assert_array_equal(centre[0, 0, 0, 0] * 255, np.arange(12, 68))
  np.testing.assert_array_equal(centre[0, 2, :, 0, 0] * 255,
                                sampling.kinetics_indices(40, 8, 2, 1)[0])


def test_views_resize_bilinearly_with_half_pixel_centres():
  # Portrait 96x80 to short side 56: 67x56, then 3 crops top/centre/bottom (offsets 0, 5, 10).
  frames = coordinate_frames(12, 96, 80)
  settings = sampling.Sampling("ssv2", 4, (56, 56), num_clips=1, num_crops=3, short_side=56)
  views = preprocess.views(frames, settings)
  assert views.shape == (3, 3, 4, 56, 56)
  # Red is the column x: linear in x, so bilinear resampling gives the line at the source
  # coordinate (x' + 0.5) * 80 / 56 - 0.5 (away from the clamped borders).
  scale = 80 / 56
  np.testing.assert_allclose(views[1, 0, 0, 20, 5:50] * 255,
                             (np.arange(5, 50) + 0.5) * scale - 0.5, atol=1e-3)
  # Green is the row y; the bottom crop starts 10 resized rows down.
  scale = 96 / 67
  np.testing.assert_allclose(views[2, 1, 0, 5:50, 30] * 255,
                             (np.arange(15, 60) + 0.5) * scale - 0.5, atol=1e-3)
  # Blue is the frame index: the uniform protocol's frames, unchanged by the resize.
  np.testing.assert_allclose(views[0, 2, :, 30, 30] * 255, sampling.uniform_indices(12, 4)[0],
                             atol=1e-4)
  # A constant frame stays constant.
  flat = np.full([3, 96, 80, 3], 200, np.uint8)
  np.testing.assert_allclose(preprocess.views(flat, settings), 200 / 255, atol=1e-6)


def test_views_match_tf_image_resize_of_each_frame():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, [20, 48, 64, 3], dtype=np.uint8)
  settings = sampling.Sampling("kinetics", 4, (56, 56), num_clips=2, num_crops=1, short_side=56)
  views = preprocess.views(frames, settings)
  indices = sampling.kinetics_indices(20, 4, 2, 2)
  for clip in range(2):
    resized = tf.image.resize(frames[indices[clip]], (56, 75)).numpy()[:, :, 9:65] / 255
    np.testing.assert_allclose(views[clip], resized.transpose(3, 0, 1, 2), atol=1e-6)
