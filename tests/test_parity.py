"""Numerical parity with torchvision's SwinTransformer3d, an implementation we did not write.

Each test builds a random-weight torchvision model (norms and bias tables perturbed), writes it to
disk in the official checkpoint layout with torch.save, converts that FILE with our own reader
(never torch.load), and compares pooled features and head logits on the same normalised input.
"""

import numpy as np
import pytest
import tensorflow as tf

import torch_reference
from conftest import relative_error, small_variant
from video_swin_hub.hub_models import checkpoint, conversion, variants
from video_swin_hub.hub_models.backbone import VideoSwinBackbone, pool
from video_swin_hub.hub_models.head import ClassificationHead

TOLERANCE = 1e-5
# Sizes that exercise end padding of patches and windows, odd spatial merges, and windows that
# shrink to the grid (including the `<=` case where grid == window disables the shift).
ODD_SIZES = [(8, 112, 112), (18, 100, 132), (4, 30, 45), (16, 56, 56)]


def convert(variant, path):
  """Our pipeline: file -> safe reader -> canonical keys -> checked assignment."""
  state = conversion.canonical_state_dict(checkpoint.load(path))
  backbone = VideoSwinBackbone(variant.architecture)
  head = ClassificationHead(variant.architecture.num_features, variant.num_classes)
  conversion.load_weights(state, variant, backbone, head)
  return backbone, head


def ours(backbone, head, video):
  pooled = pool(backbone(tf.transpose(video, [0, 2, 3, 4, 1])))
  return pooled.numpy(), head(pooled).numpy()


def assert_parity(reference, backbone, head, video):
  want_pooled, want_logits = torch_reference.reference_outputs(reference, video)
  got_pooled, got_logits = ours(backbone, head, video)
  assert got_pooled.shape == want_pooled.shape and got_logits.shape == want_logits.shape
  assert relative_error(got_pooled, want_pooled) < TOLERANCE
  assert relative_error(got_logits, want_logits) < TOLERANCE


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  variant = small_variant()
  reference = torch_reference.reference_model(variant.architecture, variant.num_classes, seed=1)
  path = tmp_path_factory.mktemp("small") / "small.pth"
  torch_reference.save_official(reference, path)
  return reference, convert(variant, path)


@pytest.mark.parametrize("size", ODD_SIZES + [(32, 64, 96)])
def test_small_model_matches_reference(small, size):
  reference, (backbone, head) = small
  video = np.random.RandomState(0).randn(2, 3, *size).astype(np.float32)
  assert_parity(reference, backbone, head, video)


def test_sthv2_window_small_model_matches_reference(tmp_path):
  variant = small_variant(window_size=(16, 7, 7))
  reference = torch_reference.reference_model(variant.architecture, variant.num_classes, seed=2)
  torch_reference.save_official(reference, tmp_path / "w16.pth")
  backbone, head = convert(variant, tmp_path / "w16.pth")
  for size in [(32, 64, 64), (40, 70, 90), (8, 112, 112)]:
    video = np.random.RandomState(1).randn(1, 3, *size).astype(np.float32)
    assert_parity(reference, backbone, head, video)


def _one_per_graph(names):
  """The first of `names` for each distinct graph (width, depths, heads, window): variants that
  share one (the Swin-B 877 models) differ only in training-only settings and the class count."""
  graphs = {}
  for name in names:
    arch = variants.get(name).architecture
    graphs.setdefault((arch.embed_dim, arch.depths, arch.num_heads, arch.window_size), name)
  return list(graphs.values())


FULL_SIZE_VARIANTS = _one_per_graph([v.name for v in variants.collection()]
                                    + ["swin_large_patch244_window877_kinetics400_22k"])


@pytest.mark.full_size
@pytest.mark.parametrize("name", FULL_SIZE_VARIANTS)
def test_variant_matches_reference_at_full_size(tmp_path, name):
  variant = variants.get(name)
  reference = torch_reference.reference_model(variant.architecture, variant.num_classes, seed=3)
  torch_reference.save_official(reference, tmp_path / f"{name}.pth")
  backbone, head = convert(variant, tmp_path / f"{name}.pth")
  rng = np.random.RandomState(4)
  for size in [(32, 224, 224), (8, 112, 112), (18, 100, 132)]:
    assert_parity(reference, backbone, head, rng.randn(1, 3, *size).astype(np.float32))
