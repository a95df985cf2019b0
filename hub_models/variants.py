"""The variant registry: one declarative entry per published model.

An `Architecture` says how to build the network; a `Variant` adds the number of classes, where the
official weights live and what they were reported to achieve. Code looks variants up by name and
reads their fields; it never branches on a name.
"""

import dataclasses
from typing import Optional, Tuple

# Frames, height, width of the papers' clips, and of the exported models unless asked otherwise.
DEFAULT_INPUT_SIZE = (32, 224, 224)
_OFFICIAL_RELEASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.4/"
_MMACTION_RELEASE = "https://download.openmmlab.com/mmaction/v1.0/recognition/swin/"


@dataclasses.dataclass(frozen=True)
class Architecture:
  """Hyper-parameters of a Video Swin backbone (official `SwinTransformer3D` arguments)."""
  embed_dim: int
  depths: Tuple[int, ...]
  num_heads: Tuple[int, ...]
  window_size: Tuple[int, int, int]
  patch_size: Tuple[int, int, int] = (2, 4, 4)
  mlp_ratio: float = 4.0
  # Stochastic depth used when fine-tuning (the official training configs' drop_path_rate).
  drop_path_rate: float = 0.1
  layer_norm_epsilon: float = 1e-5

  @property
  def num_features(self) -> int:
    """Channels of the final feature map and of the pooled feature (8C for four stages)."""
    return self.embed_dim * 2 ** (len(self.depths) - 1)

  @property
  def bias_table_size(self) -> int:
    """Rows of each relative-position bias table, fixed by the configured window."""
    d, h, w = self.window_size
    return (2 * d - 1) * (2 * h - 1) * (2 * w - 1)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset as the docs name it: display name, tfhub.dev dataset id (None if it has none) and
  the page that describes it (Kaggle's training-data field links it)."""
  name: str
  tfhub_id: Optional[str]
  url: str


@dataclasses.dataclass(frozen=True)
class License:
  """The license the weights are released under: Kaggle's license name, the SPDX id, the text."""
  kaggle_name: str
  spdx_id: str
  url: str


@dataclasses.dataclass(frozen=True)
class Variant:
  """One published model: architecture, classes, official weights and reported accuracy."""
  name: str
  architecture: Architecture
  num_classes: int
  checkpoint_urls: Tuple[str, ...]
  pretrain_dataset: Dataset
  finetune_dataset: Dataset
  top1: float
  top5: float
  # How the reported accuracy was measured: frames per view x temporal clips x spatial crops.
  eval_views: str
  # The license of the weights, as their publisher states it (every registered entry has one).
  license: Optional[License] = None
  # The official checkpoint's sha256, when its publisher states one.
  checkpoint_sha256: Optional[str] = None
  # Part of the default export set (the six models the collection is made of).
  in_collection: bool = True


SWIN_T = Architecture(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                      window_size=(8, 7, 7), drop_path_rate=0.1)
SWIN_S = dataclasses.replace(SWIN_T, depths=(2, 2, 18, 2))
SWIN_B = Architecture(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                      window_size=(8, 7, 7), drop_path_rate=0.3)
SWIN_L = Architecture(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                      window_size=(8, 7, 7), drop_path_rate=0.4)

IMAGENET_1K = Dataset("ImageNet-1K", "imagenet-ilsvrc-2012-cls",
                      "https://www.image-net.org/challenges/LSVRC/2012/")
IMAGENET_22K = Dataset("ImageNet-22K", "imagenet-21k", "https://www.image-net.org/")
KINETICS_400 = Dataset("Kinetics-400", "kinetics-400", "https://arxiv.org/abs/1705.06950")
KINETICS_600 = Dataset("Kinetics-600", "kinetics-600", "https://arxiv.org/abs/1808.01340")
KINETICS_700 = Dataset("Kinetics-700", "kinetics-700", "https://arxiv.org/abs/1907.06987")
# Kinetics-400, -600 and -700 merged and de-duplicated (UniFormerV2), as mmaction2 uses it.
KINETICS_710 = Dataset("Kinetics-710", None, "https://arxiv.org/abs/2211.09552")
SSV2 = Dataset("Something-Something V2", None, "https://arxiv.org/abs/1706.04261")

# Both the official repository and mmaction2 (the Swin-L and K710 weights) are Apache-2.0.
APACHE_2_OFFICIAL = License(
    "Apache 2.0", "Apache-2.0",
    "https://github.com/SwinTransformer/Video-Swin-Transformer/blob/master/LICENSE")
APACHE_2_MMACTION = License(
    "Apache 2.0", "Apache-2.0", "https://github.com/open-mmlab/mmaction2/blob/main/LICENSE")

_KINETICS_VIEWS = "32 frames (interval 2) x 4 clips x 3 crops"


def _official(name: str) -> Tuple[str, ...]:
  return (f"{_OFFICIAL_RELEASE}{name}.pth",)


def _mmaction(config: str, stamp: str) -> Tuple[str, ...]:
  return (f"{_MMACTION_RELEASE}{config}/{config}_{stamp}.pth",)


_VARIANTS = (
    Variant(
        name="swin_tiny_patch244_window877_kinetics400_1k",
        architecture=SWIN_T, num_classes=400,
        checkpoint_urls=_official("swin_tiny_patch244_window877_kinetics400_1k"),
        pretrain_dataset=IMAGENET_1K, finetune_dataset=KINETICS_400,
        top1=78.8, top5=93.6, eval_views=_KINETICS_VIEWS, license=APACHE_2_OFFICIAL),
    Variant(
        name="swin_small_patch244_window877_kinetics400_1k",
        architecture=SWIN_S, num_classes=400,
        checkpoint_urls=_official("swin_small_patch244_window877_kinetics400_1k"),
        pretrain_dataset=IMAGENET_1K, finetune_dataset=KINETICS_400,
        top1=80.6, top5=94.5, eval_views=_KINETICS_VIEWS, license=APACHE_2_OFFICIAL),
    Variant(
        name="swin_base_patch244_window877_kinetics400_1k",
        architecture=SWIN_B, num_classes=400,
        checkpoint_urls=_official("swin_base_patch244_window877_kinetics400_1k"),
        pretrain_dataset=IMAGENET_1K, finetune_dataset=KINETICS_400,
        top1=80.6, top5=94.6, eval_views=_KINETICS_VIEWS, license=APACHE_2_OFFICIAL),
    Variant(
        name="swin_base_patch244_window877_kinetics400_22k",
        architecture=dataclasses.replace(SWIN_B, drop_path_rate=0.2), num_classes=400,
        checkpoint_urls=_official("swin_base_patch244_window877_kinetics400_22k"),
        pretrain_dataset=IMAGENET_22K, finetune_dataset=KINETICS_400,
        top1=82.7, top5=95.5, eval_views=_KINETICS_VIEWS, license=APACHE_2_OFFICIAL),
    Variant(
        name="swin_base_patch244_window877_kinetics600_22k",
        architecture=dataclasses.replace(SWIN_B, drop_path_rate=0.2), num_classes=600,
        checkpoint_urls=_official("swin_base_patch244_window877_kinetics600_22k"),
        pretrain_dataset=IMAGENET_22K, finetune_dataset=KINETICS_600,
        top1=84.0, top5=96.5, eval_views=_KINETICS_VIEWS, license=APACHE_2_OFFICIAL),
    Variant(
        name="swin_base_patch244_window1677_sthv2",
        architecture=dataclasses.replace(SWIN_B, window_size=(16, 7, 7), drop_path_rate=0.4),
        num_classes=174,
        checkpoint_urls=_official("swin_base_patch244_window1677_sthv2"),
        pretrain_dataset=KINETICS_400, finetune_dataset=SSV2,
        top1=69.6, top5=92.7, eval_views="32 frames (uniform) x 1 clip x 3 crops",
        license=APACHE_2_OFFICIAL),
    Variant(
        name="swin_large_patch244_window877_kinetics400_22k",
        architecture=SWIN_L, num_classes=400,
        checkpoint_urls=_mmaction(
            "swin-large-p244-w877_in22k-pre_8xb8-amp-32x2x1-30e_kinetics400-rgb", "20220930-78ad8b11"),
        pretrain_dataset=IMAGENET_22K, finetune_dataset=KINETICS_400,
        top1=83.46, top5=95.91, eval_views=_KINETICS_VIEWS, license=APACHE_2_MMACTION,
        in_collection=False),
    Variant(
        name="swin_large_patch244_window877_kinetics700_22k",
        architecture=SWIN_L, num_classes=700,
        checkpoint_urls=_mmaction(
            "swin-large-p244-w877_in22k-pre_16xb8-amp-32x2x1-30e_kinetics700-rgb", "20220930-f8d74db7"),
        pretrain_dataset=IMAGENET_22K, finetune_dataset=KINETICS_700,
        top1=75.92, top5=92.72, eval_views=_KINETICS_VIEWS, license=APACHE_2_MMACTION,
        in_collection=False),
    Variant(
        name="swin_small_patch244_window877_kinetics710_1k",
        architecture=SWIN_S, num_classes=710,
        checkpoint_urls=_mmaction(
            "swin-small-p244-w877_in1k-pre_32xb4-amp-32x2x1-30e_kinetics710-rgb", "20230612-8e082ff1"),
        pretrain_dataset=IMAGENET_1K, finetune_dataset=KINETICS_710,
        top1=76.90, top5=92.96, eval_views=_KINETICS_VIEWS, license=APACHE_2_MMACTION,
        in_collection=False),
)

VARIANTS = {variant.name: variant for variant in _VARIANTS}


class UnknownVariantError(KeyError):
  """Raised for a name that is not in the registry; the message lists the valid names."""

  def __str__(self):
    return self.args[0]


def get(name: str) -> Variant:
  """Returns the registered variant called `name`, or raises UnknownVariantError."""
  try:
    return VARIANTS[name]
  except KeyError:
    raise UnknownVariantError(
        f"unknown variant {name!r}; valid names: {', '.join(sorted(VARIANTS))}") from None


def collection() -> Tuple[Variant, ...]:
  """The variants exported by default, in registry order."""
  return tuple(v for v in _VARIANTS if v.in_collection)
