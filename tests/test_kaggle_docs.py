"""The Kaggle Models pages (export/docs/kaggle.py) and the registry metadata they are made from."""

import re

import pytest

from video_swin_hub.export import published_models
from video_swin_hub.export.docs import kaggle as kaggle_docs
from video_swin_hub.hub_models import variants

HANDLE = "https://www.kaggle.com/models/alice/video-swin-transformer/tensorFlow2"


def _entry(model: published_models.PublishedModel, version: int = 1):
  return kaggle_docs.PublishedVersion(
      model, version, f"{HANDLE}/{model.name}/{version}",
      f"alice/video-swin-transformer/tensorFlow2/{model.name}/{version}")


def _code_blocks(markdown: str, language: str):
  return re.findall(rf"```{language}\n(.*?)```", markdown, re.S)


def test_every_registered_variant_states_its_license_and_training_data():
  for variant in variants.VARIANTS.values():
    assert variant.license is not None, variant.name
    assert variant.license.kaggle_name == "Apache 2.0" and variant.license.spdx_id == "Apache-2.0"
    official = variant.checkpoint_urls[0].startswith("https://github.com/SwinTransformer/")
    assert ("Video-Swin-Transformer" if official else "mmaction2") in variant.license.url
    for dataset in (variant.pretrain_dataset, variant.finetune_dataset):
      assert dataset.url.startswith("https://"), dataset


@pytest.mark.parametrize("output", sorted(published_models.OUTPUTS))
def test_variation_usage_names_kaggle_handles_in_working_python(output):
  model = published_models.PublishedModel(variants.get("swin_base_patch244_window1677_sthv2"),
                                          published_models.get_output(output))
  card = kaggle_docs.variation_card(_entry(model))
  blocks = _code_blocks(card.usage, "python")
  assert len(blocks) == 2
  for block in blocks:
    compile(block, "usage", "exec")  # raises on a syntax error
  assert f'hub.KerasLayer("{HANDLE}/{model.name}/1"' in blocks[0]
  assert (f'kagglehub.model_download("alice/video-swin-transformer/tensorFlow2/{model.name}/1")'
          in blocks[1])
  assert f"--model={HANDLE}/{model.name}/1" in _code_blocks(card.usage, "sh")[0]
  assert "Frames: 32 frames sampled uniformly over the whole video" in card.overview
  assert card.training_data == (variants.KINETICS_400.url, variants.SSV2.url)
  assert card.license_name == "Apache 2.0" and card.fine_tunable
  assert "tfhub.dev" not in card.overview + card.usage


def test_model_card_links_the_newest_version_of_each_variation():
  tiny = published_models.PublishedModel(
      variants.get("swin_tiny_patch244_window877_kinetics400_1k"))
  logits = published_models.PublishedModel(tiny.variant, published_models.get_output("logits"))
  card = kaggle_docs.model_card([_entry(tiny, 2), _entry(tiny, 1), _entry(logits, 1)],
                                "https://www.kaggle.com/models/alice/video-swin-transformer")
  rows = [line for line in card.description.splitlines() if line.startswith("| `")]
  assert rows == [
      f"| `{tiny.name}` | Swin-T | 8x7x7 | ImageNet-1K | Kinetics-400 | 78.8 | 93.6 | "
      f"32 frames (interval 2) x 4 clips x 3 crops | `features` `[batch, 768]` | "
      f"[2]({HANDLE}/{tiny.name}/2) |",
      f"| `{logits.name}` | Swin-T | 8x7x7 | ImageNet-1K | Kinetics-400 | 78.8 | 93.6 | "
      f"32 frames (interval 2) x 4 clips x 3 crops | `logits` `[batch, 400]` | "
      f"[1]({HANDLE}/{logits.name}/1) |",
  ]
  assert "tfhub.dev" not in card.description


def test_repository_card_lists_every_registered_variant_without_dead_links():
  card = kaggle_docs.repository_model_card()
  for variant in variants.VARIANTS.values():
    assert f"| `{variant.name}` |" in card
  assert card.count("| not published |") == len(variants.VARIANTS)
  assert "tfhub.dev" not in card
  for url in re.findall(r"https?://[^\s)\"]+", card):
    assert "OWNER" in url or not url.startswith("https://www.kaggle.com/models/"), url
