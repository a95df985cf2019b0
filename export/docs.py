"""Markdown documentation for the exported models, generated from the variant registry.

tfhub.dev (and Kaggle Models, which took over its content) reads three kinds of markdown page:
one per publisher, one per model version and one per collection. Every fact on these pages comes
from `hub_models.variants`, so the docs cannot drift from what is exported.
"""

import os
import re
import tempfile
from typing import List, Optional, Sequence
import urllib.parse

from hub_models import variants as variants_lib

DEFAULT_PUBLISHER = "video-swin-hub"
COLLECTION_NAME = "video-swin-transformer"
TASK = "video-feature-extraction"
NETWORK_ARCHITECTURE = "video-swin-transformer"
SAVED_MODEL_FORMAT = "saved_model_2"
LICENSE = "apache-2.0"
PAPER_URL = "https://arxiv.org/abs/2106.13230"
OFFICIAL_REPO_URL = "https://github.com/SwinTransformer/Video-Swin-Transformer"
# Where the docs live inside a checkout of the tensorflow/tfhub.dev repository.
DOCS_DIR = os.path.join("tfhub.dev", "assets", "docs")
# The exported input without its batch axis: channels, frames, height, width. It is the default
# input size of `hub_models.hub_module.FeatureExtractor`, which the export uses.
INPUT_SHAPE = (3, 32, 224, 224)

# Backbone sizes as the paper names them, keyed by (embed_dim, depths).
_BACKBONE_NAMES = {
    (96, (2, 2, 6, 2)): "Swin-T",
    (96, (2, 2, 18, 2)): "Swin-S",
    (128, (2, 2, 18, 2)): "Swin-B",
    (192, (2, 2, 18, 2)): "Swin-L",
}

_PAPER_CITATION = ("Ze Liu, Jia Ning, Yue Cao, Yixuan Wei, Zheng Zhang, Stephen Lin, Han Hu: "
                   f"*Video Swin Transformer*, CVPR 2022, [arXiv:2106.13230]({PAPER_URL})")


def backbone_name(architecture: variants_lib.Architecture) -> str:
  """The paper's name for the backbone size ("Swin-B"), or its hyper-parameters if unnamed."""
  key = (architecture.embed_dim, tuple(architecture.depths))
  return _BACKBONE_NAMES.get(
      key, f"Swin (C={architecture.embed_dim}, depths {_join(architecture.depths, ',')})")


def model_handle(publisher: str, name: str, version: int) -> str:
  """The tfhub.dev handle of one model version: publisher/name/version."""
  return f"{publisher}/{name}/{version}"


def asset_path(asset_base_url: str, name: str, version: int) -> str:
  """The URL of a model version's SavedModel archive."""
  return f"{asset_base_url.rstrip('/')}/{name}/{version}.tar.gz"


def model_doc_path(docs_root: str, publisher: str, name: str, version: int) -> str:
  """Where tfhub.dev expects the doc of one model version."""
  return os.path.join(docs_root, publisher, "models", name, f"{version}.md")


def collection_doc_path(docs_root: str, publisher: str, collection_name: str) -> str:
  """Where tfhub.dev expects a collection doc (collections only have version 1)."""
  return os.path.join(docs_root, publisher, "collections", collection_name, "1.md")


def publisher_doc_path(docs_root: str, publisher: str) -> str:
  """Where tfhub.dev expects a publisher's page."""
  return os.path.join(docs_root, publisher, f"{publisher}.md")


def _join(values, separator: str = "x") -> str:
  return separator.join(str(v) for v in values)


def _feature_map_shape(architecture: variants_lib.Architecture) -> tuple:
  """Frames, height, width of the final feature map for INPUT_SHAPE: the patch embedding divides
  each axis by the patch size, and each of the three patch mergings halves height and width."""
  _, frames, height, width = INPUT_SHAPE
  patch_d, patch_h, patch_w = architecture.patch_size
  merges = 2 ** (len(architecture.depths) - 1)
  return frames // patch_d, height // patch_h // merges, width // patch_w // merges


def _frame_sampling(variant: variants_lib.Variant) -> str:
  """How to pick the input frames, read from the evaluation protocol of the reported accuracy."""
  frames = INPUT_SHAPE[1]
  dataset = variant.finetune_dataset.name
  interval = re.search(r"\binterval (\d+)", variant.eval_views)
  if interval:
    step = int(interval.group(1))
    return (f"{frames} frames taken at a temporal interval of {step} (one frame out of every "
            f"{step}, so a clip spans {frames * step} consecutive source frames), as in the "
            f"official {dataset} evaluation")
  if re.search(r"\buniform", variant.eval_views):
    return (f"{frames} frames sampled uniformly over the whole video (one from each of {frames} "
            f"equal segments), as in the official {dataset} evaluation")
  return f"{frames} frames, sampled the way the {dataset} fine-tuning data was sampled"


def _datasets_with_ids(variant: variants_lib.Variant) -> List[str]:
  """tfhub.dev dataset ids of the pretraining and fine-tuning data, skipping datasets without."""
  ids = [d.tfhub_id for d in (variant.pretrain_dataset, variant.finetune_dataset) if d.tfhub_id]
  return list(dict.fromkeys(ids))


def _checkpoint_list(variant: variants_lib.Variant) -> str:
  return ", ".join(f"[`{url.rsplit('/', 1)[-1]}`]({url})" for url in variant.checkpoint_urls)


def model_doc(variant: variants_lib.Variant, version: int, publisher: str,
              asset_base_url: str) -> str:
  """The tfhub.dev model doc of one exported variant, as markdown."""
  arch = variant.architecture
  backbone = backbone_name(arch)
  pretrain, finetune = variant.pretrain_dataset.name, variant.finetune_dataset.name
  batch_shape = f"[batch, {_join(INPUT_SHAPE, ', ')}]"
  features = arch.num_features
  archive = asset_path(asset_base_url, variant.name, version)
  metadata = [
      f"asset-path: {archive}",
      f"task: {TASK}",
      f"network-architecture: {NETWORK_ARCHITECTURE}",
      f"format: {SAVED_MODEL_FORMAT}",
      "fine-tunable: true",
      f"license: {LICENSE}",
  ] + [f"dataset: {dataset_id}" for dataset_id in _datasets_with_ids(variant)]
  _, frames, height, width = INPUT_SHAPE

  return "\n".join([
      f"# Module {model_handle(publisher, variant.name, version)}",
      f"Video Swin Transformer ({backbone}) video feature extractor, pretrained on {pretrain} "
      f"and fine-tuned on {finetune}; outputs a {features}-dimensional pooled feature.",
      "",
      *(f"<!-- {line} -->" for line in metadata),
      "",
      "## Overview",
      "",
      f"The backbone of the {backbone} Video Swin Transformer [1] (embedding dimension "
      f"{arch.embed_dim}, depths {_join(arch.depths, ', ')}, heads {_join(arch.num_heads, ', ')}, "
      f"window {_join(arch.window_size)}), converted to a TensorFlow 2 SavedModel from the "
      f"official PyTorch checkpoint {_checkpoint_list(variant)} [2, 3].",
      "",
      f"The backbone was pretrained on {pretrain} and then fine-tuned on {finetune} with a "
      f"{variant.num_classes}-way classifier. That classifier is not part of this model: it "
      f"returns the {features}-dimensional pooled video feature, for use as a video embedding or "
      "as the starting point for fine-tuning on a new task.",
      "",
      "## Input",
      "",
      f"- `video`: a float32 tensor of shape `{batch_shape}`, channels first: "
      "(batch, channels, frames, height, width). The batch size is free; the other sizes are "
      "fixed.",
      "- RGB values in [0, 1] (divide 8-bit pixels by 255). The official ImageNet mean/std "
      "normalisation is applied inside the model, so do not normalise the input yourself.",
      f"- Frames: {_frame_sampling(variant)}.",
      f"- Size: {height}x{width} pixels per frame: resize the short side to at least {height} "
      f"and crop {height}x{width}.",
      "- A clip decoded as `[frames, height, width, 3]` becomes channels first with "
      "`tf.transpose(clip, [3, 0, 1, 2])`.",
      "",
      "## Output",
      "",
      f"A float32 tensor of shape `[batch, {features}]`: the mean over frames, height and width "
      f"of the final LayerNorm feature map (`[batch, {features}, "
      f"{_join(_feature_map_shape(arch), ', ')}]` for a {frames}x{height}x{width} clip). "
      "The `serving_default` signature takes `video` and returns `{\"features\": ...}` with the "
      "same tensor.",
      "",
      "## Usage",
      "",
      "TensorFlow 2 with tf_keras (`hub.KerasLayer` is a Keras 2 layer):",
      "",
      "```python",
      "import os",
      "os.environ[\"TF_USE_LEGACY_KERAS\"] = \"1\"  # Before TensorFlow is imported.",
      "import tensorflow as tf",
      "import tensorflow_hub as hub",
      "import tf_keras",
      "",
      "num_classes = 10  # Your task's classes.",
      f"inputs = tf_keras.Input(shape={INPUT_SHAPE}, dtype=tf.float32)",
      f"features = hub.KerasLayer(\"{archive}\", trainable=True)(inputs)",
      "logits = tf_keras.layers.Dense(num_classes)(features)",
      "model = tf_keras.Model(inputs, logits)",
      "```",
      "",
      "Keras 3 (`keras.layers.TFSMLayer` loads a local SavedModel directory; unpack the archive "
      f"first, e.g. `mkdir model && tar -xzf {version}.tar.gz -C model`):",
      "",
      "```python",
      "import keras",
      "",
      "num_classes = 10  # Your task's classes.",
      "backbone = keras.layers.TFSMLayer(",
      "    \"model\", call_endpoint=\"serving_default\", trainable=True)",
      f"inputs = keras.Input(shape={INPUT_SHAPE}, dtype=\"float32\")",
      "features = backbone(inputs)[\"features\"]",
      "logits = keras.layers.Dense(num_classes)(features)",
      "model = keras.Model(inputs, logits)",
      "```",
      "",
      "## Fine-tuning",
      "",
      "- The model is a reusable SavedModel: `__call__(video, training=False)`, `variables`, "
      "`trainable_variables` and `regularization_losses`. `hub.KerasLayer(..., trainable=True)` "
      f"calls it with `training=True` during training, which turns on stochastic depth (drop-path "
      f"rate {arch.drop_path_rate}, as in the official fine-tuning configuration).",
      "- The `serving_default` signature used by `TFSMLayer` always runs with `training=False`: "
      "the weights are still trained, without stochastic depth.",
      "- Use a lower learning rate for the backbone than for the new, randomly initialised head; "
      "the paper fine-tunes the backbone with a 10x smaller learning rate than the head.",
      "- dtypes are fixed at export: the model computes in float32 and a Keras mixed-precision "
      "policy does not reach inside it. Feed float32 input.",
      "- The backbone uses LayerNorm only (no batch normalisation), so small batches are fine.",
      "",
      "## Accuracy",
      "",
      "| dataset | views | top-1 | top-5 |",
      "|---|---|---|---|",
      f"| {finetune} | {variant.eval_views} | {variant.top1} | {variant.top5} |",
      "",
      "These are the official numbers reported for the original PyTorch checkpoint with its "
      f"classifier head: top-1/top-5 accuracy in % on {finetune}, averaging the predictions of "
      "several views per video (frames per clip x clips x spatial crops). This SavedModel has no "
      "classifier head, and the numbers were not measured again with it.",
      "",
      "## References",
      "",
      f"1. {_PAPER_CITATION}",
      f"2. Official implementation and model zoo: {OFFICIAL_REPO_URL}",
      f"3. Checkpoint: {', '.join(variant.checkpoint_urls)}",
      "",
  ])


def _model_table(variants: Sequence[variants_lib.Variant], publisher: Optional[str]) -> List[str]:
  """A markdown table of `variants`; names link to their tfhub.dev pages when `publisher` is set
  and to their checkpoints otherwise."""
  rows = [
      "| model | backbone | window | pretrain | fine-tune | top-1 | top-5 | evaluation views "
      "| feature size |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for v in variants:
    if publisher:
      model = f"[{v.name}](https://tfhub.dev/{publisher}/{v.name})"
    else:
      source = urllib.parse.urlparse(v.checkpoint_urls[0]).netloc
      model = f"{v.name} ([checkpoint]({v.checkpoint_urls[0]}), {source})"
    arch = v.architecture
    rows.append(
        f"| {model} | {backbone_name(arch)} | {_join(arch.window_size)} | "
        f"{v.pretrain_dataset.name} | {v.finetune_dataset.name} | {v.top1} | {v.top5} | "
        f"{v.eval_views} | {arch.num_features} |")
  return rows


def collection_doc(variants: Sequence[variants_lib.Variant], publisher: str,
                   collection_name: str = COLLECTION_NAME,
                   others: Sequence[variants_lib.Variant] = ()) -> str:
  """The tfhub.dev collection doc linking `variants`; `others` are listed, unlinked, as further
  registered models that are not published in the collection."""
  batch_shape = f"[batch, {_join(INPUT_SHAPE, ', ')}]"
  sizes = sorted({v.architecture.num_features for v in variants})
  other_section = []
  if others:
    other_section = [
        "## Further registered models",
        "",
        "The registry also holds these variants, which are not part of the collection; "
        "`python -m export.export_savedmodel --variant=NAME` exports them the same way.",
        "",
        *_model_table(others, publisher=None),
        "",
    ]
  return "\n".join([
      f"# Collection {publisher}/{collection_name}/1",
      "Video Swin Transformer video feature extractors converted from the official checkpoints.",
      "",
      f"<!-- task: {TASK} -->",
      f"<!-- network-architecture: {NETWORK_ARCHITECTURE} -->",
      "",
      "## Overview",
      "",
      f"This collection holds {len(variants)} Video Swin Transformer [1] backbones converted "
      "from the official PyTorch checkpoints [2] to fine-tunable TensorFlow 2 SavedModels. Each "
      f"returns the pooled video feature ({_join(sizes, ' or ')} values) for use as a video "
      "embedding or for fine-tuning with a new head. The accuracies are the official numbers "
      "reported for the original checkpoints with their classifier heads (top-1/top-5 in %).",
      "",
      "## Models",
      "",
      *_model_table(variants, publisher),
      "",
      *other_section,
      "## Input",
      "",
      f"- `video`: float32 `{batch_shape}`, channels first (batch, channels, frames, height, "
      "width), RGB in [0, 1]; the official mean/std normalisation is applied inside.",
      "- Frames: sample them as in the model's evaluation views (frames per clip with their "
      "sampling x clips x crops, in the table); each model's page spells the sampling out.",
      "- Output: `[batch, feature size]` float32, the mean over frames, height and width of the "
      "final LayerNorm feature map; `serving_default` returns it as `{\"features\": ...}`.",
      "",
      "## References",
      "",
      f"1. {_PAPER_CITATION}",
      f"2. Official implementation and model zoo: {OFFICIAL_REPO_URL}",
      "",
  ])


def publisher_doc(publisher: str) -> str:
  """The tfhub.dev publisher page."""
  return "\n".join([
      f"# Publisher {publisher}",
      "Video Swin Transformer models for TensorFlow Hub.",
      "",
      f"## {publisher}",
      "",
      "Publishes the official Video Swin Transformer checkpoints converted to fine-tunable "
      f"TensorFlow 2 SavedModels (video feature extractors). Original models: {OFFICIAL_REPO_URL}",
      "",
  ])


def repository_collection_md() -> str:
  """The repository's collection.md: the collection doc plus the registry's other variants."""
  others = [v for v in variants_lib.VARIANTS.values() if not v.in_collection]
  return collection_doc(variants_lib.collection(), DEFAULT_PUBLISHER, others=others)


def write_text_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file, so readers never see a partial file."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  fd, temp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(temp_path, path)
  except BaseException:
    os.unlink(temp_path)
    raise


def write_tree(output_dir: str, variants: Sequence[variants_lib.Variant], version: int,
               publisher: str, asset_base_url: str,
               collection_name: str = COLLECTION_NAME) -> List[str]:
  """Writes the publisher page, one model doc per variant and the collection doc under
  `output_dir/tfhub.dev/assets/docs` and returns the written paths."""
  if not variants:
    raise ValueError("no variants to document")
  docs_root = os.path.join(output_dir, DOCS_DIR)
  contents = [(publisher_doc_path(docs_root, publisher), publisher_doc(publisher))]
  contents += [(model_doc_path(docs_root, publisher, v.name, version),
                model_doc(v, version, publisher, asset_base_url)) for v in variants]
  contents.append((collection_doc_path(docs_root, publisher, collection_name),
                   collection_doc(variants, publisher, collection_name)))
  for path, text in contents:
    write_text_atomically(path, text)
  return [path for path, _ in contents]
