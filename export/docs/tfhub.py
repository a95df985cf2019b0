"""Markdown documentation for the exported models, generated from the variant registry.

tfhub.dev (and Kaggle Models, which took over its content) reads three kinds of markdown page:
one per publisher, one per model version and one per collection. Every fact on these pages comes
from `hub_models.variants` and `export.published_models`, so the docs cannot drift from what is
exported.
"""

import os
import re
from typing import Dict, List, Sequence, Tuple

from .. import files
from .. import published_models
from ...hub_models import variants as variants_lib

DEFAULT_PUBLISHER = "video-swin-hub"
COLLECTION_NAME = "video-swin-transformer"
NETWORK_ARCHITECTURE = "video-swin-transformer"
SAVED_MODEL_FORMAT = "saved_model_2"
LICENSE = "apache-2.0"
PAPER_URL = "https://arxiv.org/abs/2106.13230"
OFFICIAL_REPO_URL = "https://github.com/SwinTransformer/Video-Swin-Transformer"
# Where the docs live inside a checkout of the tensorflow/tfhub.dev repository.
DOCS_DIR = os.path.join("tfhub.dev", "assets", "docs")
# The docs' asset-path base when a local folder is published without --asset_base_url: tfhub.dev
# wants an http(s) or gs:// URL, so the folder's own path cannot stand in.
PLACEHOLDER_ASSET_BASE_URL = "https://storage.googleapis.com/YOUR_BUCKET/video-swin"

# Backbone sizes as the paper names them, keyed by (embed_dim, depths).
_BACKBONE_NAMES = {
    (96, (2, 2, 6, 2)): "Swin-T",
    (96, (2, 2, 18, 2)): "Swin-S",
    (128, (2, 2, 18, 2)): "Swin-B",
    (192, (2, 2, 18, 2)): "Swin-L",
}

PAPER_CITATION = ("Ze Liu, Jia Ning, Yue Cao, Yixuan Wei, Zheng Zhang, Stephen Lin, Han Hu: "
                   f"*Video Swin Transformer*, CVPR 2022, [arXiv:2106.13230]({PAPER_URL})")

PublishedModel = published_models.PublishedModel
_NUM_CLASSES = "num_classes = 10  # Your task's classes."


def backbone_name(architecture: variants_lib.Architecture) -> str:
  """The paper's name for the backbone size ("Swin-B"), or its hyper-parameters if unnamed."""
  key = (architecture.embed_dim, tuple(architecture.depths))
  return _BACKBONE_NAMES.get(
      key, f"Swin (C={architecture.embed_dim}, depths {join(architecture.depths, ',')})")


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


def join(values, separator: str = "x") -> str:
  return separator.join(str(v) for v in values)


def batch_shape(shape: Sequence[int]) -> str:
  return f"[batch, {join(shape, ', ')}]"


def frame_sampling(variant: variants_lib.Variant, frames: int) -> str:
  """How to pick the input frames, read from the evaluation protocol of the reported accuracy."""
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


# What the docs add for a precision other than float32: how far its output is from float32's
# (measured by tests/test_bfloat16.py against torchvision in float32) and what the archive holds.
_PRECISION_NOTES = {
    "bfloat16": "Its output is within about 5e-3 relative error (Frobenius) of the float32 "
                "model's (tested below 1e-2 against the float32 reference for every collection "
                "architecture). The archive holds float32 variables: fine-tuning trains them in "
                "float32, through bfloat16 matmuls.",
}


def precision_text(model: PublishedModel) -> str:
  """What the model computes in, what its archive holds and how that affects its output."""
  note = _PRECISION_NOTES.get(model.precision.key)
  return " ".join([
      f"dtypes are fixed at export: the model {model.precision.summary} and a Keras "
      "mixed-precision policy does not reach inside it. Feed float32 input.",
      *([note] if note else [])])


def _datasets_with_ids(variant: variants_lib.Variant) -> List[str]:
  """tfhub.dev dataset ids of the pretraining and fine-tuning data, skipping datasets without."""
  ids = [d.tfhub_id for d in (variant.pretrain_dataset, variant.finetune_dataset) if d.tfhub_id]
  return list(dict.fromkeys(ids))


def _checkpoint_list(variant: variants_lib.Variant) -> str:
  return ", ".join(f"[`{url.rsplit('/', 1)[-1]}`]({url})" for url in variant.checkpoint_urls)


def output_text(model: PublishedModel, archive: str) -> Dict[str, object]:
  """What the doc says about the model's output, keyed by doc part, for `model.output.key`.

  description: the doc's one-line description; overview: what the model returns and what for;
  output: the Output section; tf_keras / keras3: the usage lines after the inputs are defined,
  ending with the model's output `result`; head: what the fine-tuning section says about the
  classifier.
  """
  variant, arch = model.variant, model.variant.architecture
  backbone = backbone_name(arch)
  pretrain, finetune = variant.pretrain_dataset.name, variant.finetune_dataset.name
  features, classes = arch.num_features, variant.num_classes
  map_shape = batch_shape((features, *model.feature_map_size))
  frames, height, width = model.input_size
  texts = {
      "features": {
          "description": f"Video Swin Transformer ({backbone}) video feature extractor, "
                         f"pretrained on {pretrain} and fine-tuned on {finetune}; outputs a "
                         f"{features}-dimensional pooled feature.",
          "overview": f"That classifier is not part of this model: it returns the "
                      f"{features}-dimensional pooled video feature, for use as a video "
                      "embedding or as the starting point for fine-tuning on a new task.",
          "output": f"A float32 tensor of shape `[batch, {features}]`: the mean over frames, "
                    "height and width of the final LayerNorm feature map "
                    f"(`{map_shape}` for a {frames}x{height}x{width} clip).",
          "tf_keras": [_NUM_CLASSES,
                       f"features = hub.KerasLayer(\"{archive}\", trainable=True)(inputs)",
                       "logits = tf_keras.layers.Dense(num_classes)(features)"],
          "keras3": [_NUM_CLASSES, "features = backbone(inputs)[\"features\"]",
                     "logits = keras.layers.Dense(num_classes)(features)"],
          "result": "logits",
          "head": "Add a new head for your task, e.g. a Dense layer on the pooled feature.",
      },
      "feature_map": {
          "description": f"Video Swin Transformer ({backbone}) video feature extractor, "
                         f"pretrained on {pretrain} and fine-tuned on {finetune}; outputs the "
                         f"final {features}-channel feature map.",
          "overview": "That classifier is not part of this model: it returns the final "
                      f"LayerNorm feature map `{map_shape}`, channels first, for heads that "
                      "need where and when things happen (localisation, attention pooling, "
                      "dense prediction). The pooled-feature model of the same variant returns "
                      "its mean as one vector.",
          "output": f"A float32 tensor of shape `{map_shape}`, channels first (batch, "
                    "channels, frames, height, width): the output of the backbone's final "
                    "LayerNorm. Its mean over the last three axes is the pooled feature.",
          "tf_keras": [_NUM_CLASSES,
                       f"feature_map = hub.KerasLayer(\"{archive}\", trainable=True)(inputs)",
                       "pooled = tf_keras.layers.GlobalAveragePooling3D(",
                       "    data_format=\"channels_first\")(feature_map)",
                       "logits = tf_keras.layers.Dense(num_classes)(pooled)"],
          "keras3": [_NUM_CLASSES, "feature_map = backbone(inputs)[\"feature_map\"]",
                     "pooled = keras.layers.GlobalAveragePooling3D(",
                     "    data_format=\"channels_first\")(feature_map)",
                     "logits = keras.layers.Dense(num_classes)(pooled)"],
          "result": "logits",
          "head": "Add a new head for your task on the feature map.",
      },
      "logits": {
          "description": f"Video Swin Transformer ({backbone}) video classifier for the "
                         f"{classes} classes of {finetune}, pretrained on {pretrain}; outputs "
                         "logits.",
          "overview": f"This model keeps that classifier (the official head: average pooling, "
                      "dropout 0.5 when training, a linear layer) and returns its logits; "
                      "apply a softmax for class probabilities. Classes are in the order of "
                      f"the official {finetune} label list.",
          "output": f"A float32 tensor of shape `[batch, {classes}]`: unnormalised class "
                    f"scores (logits) over the {classes} classes of {finetune}. The reported "
                    "accuracy averages the softmax over several views per video.",
          "tf_keras": [f"logits = hub.KerasLayer(\"{archive}\")(inputs)",
                       "probabilities = tf_keras.layers.Softmax()(logits)"],
          "keras3": ["logits = backbone(inputs)[\"logits\"]",
                     "probabilities = keras.layers.Softmax()(logits)"],
          "result": "probabilities",
          "head": f"The official {classes}-way head is included and trains with the backbone "
                  "(dropout 0.5 when training). For another set of classes start from the "
                  "pooled-feature model and add a new head.",
      },
  }
  text = texts[model.output.key]
  if model.precision.key != published_models.DEFAULT_PRECISION:
    text["description"] += f" Computes in {model.precision.compute_dtype}."
  return text


def tf_keras_snippet(model: PublishedModel, text: Dict[str, object]) -> List[str]:
  """The fenced tf_keras `hub.KerasLayer` example for `model`, `text` from `output_text`."""
  return [
      "```python",
      "import os",
      "os.environ[\"TF_USE_LEGACY_KERAS\"] = \"1\"  # Before TensorFlow is imported.",
      "import tensorflow as tf",
      "import tensorflow_hub as hub",
      "import tf_keras",
      "",
      f"inputs = tf_keras.Input(shape={model.input_shape}, dtype=tf.float32)",
      *text["tf_keras"],
      f"model = tf_keras.Model(inputs, {text['result']})",
      "```",
  ]


def model_doc(model: PublishedModel, version: int, publisher: str, asset_base_url: str) -> str:
  """The tfhub.dev model doc of one exported model, as markdown."""
  variant = model.variant
  arch = variant.architecture
  backbone = backbone_name(arch)
  pretrain, finetune = variant.pretrain_dataset.name, variant.finetune_dataset.name
  archive = asset_path(asset_base_url, model.name, version)
  text = output_text(model, archive)
  metadata = [
      f"asset-path: {archive}",
      f"task: {model.output.task}",
      f"network-architecture: {NETWORK_ARCHITECTURE}",
      f"format: {SAVED_MODEL_FORMAT}",
      "fine-tunable: true",
      f"license: {LICENSE}",
  ] + [f"dataset: {dataset_id}" for dataset_id in _datasets_with_ids(variant)]
  frames, height, width = model.input_size
  default_frames, default_height, default_width = published_models.DEFAULT_INPUT_SIZE
  measured_at = ""
  if tuple(model.input_size) != published_models.DEFAULT_INPUT_SIZE:
    measured_at = (f" They were measured on {default_frames}x{default_height}x{default_width} "
                   f"clips; this model takes {frames}x{height}x{width}.")
  head_note = ("This SavedModel keeps that head" if model.output.keeps_head
               else "This SavedModel has no classifier head")
  key = model.output.key

  return "\n".join([
      f"# Module {model_handle(publisher, model.name, version)}",
      text["description"],
      "",
      *(f"<!-- {line} -->" for line in metadata),
      "",
      "## Overview",
      "",
      f"The {backbone} Video Swin Transformer [1] (embedding dimension "
      f"{arch.embed_dim}, depths {join(arch.depths, ', ')}, heads {join(arch.num_heads, ', ')}, "
      f"window {join(arch.window_size)}), converted to a TensorFlow 2 SavedModel from the "
      f"official PyTorch checkpoint {_checkpoint_list(variant)} [2, 3].",
      "",
      f"The backbone was pretrained on {pretrain} and then fine-tuned on {finetune} with a "
      f"{variant.num_classes}-way classifier. {text['overview']}",
      "",
      "## Input",
      "",
      f"- `video`: a float32 tensor of shape `{batch_shape(model.input_shape)}`, channels "
      "first: (batch, channels, frames, height, width). The batch size is free; the other sizes "
      "are fixed.",
      "- RGB values in [0, 1] (divide 8-bit pixels by 255). The official ImageNet mean/std "
      "normalisation is applied inside the model, so do not normalise the input yourself.",
      f"- Frames: {frame_sampling(variant, frames)}.",
      f"- Size: {height}x{width} pixels per frame: resize the short side to at least "
      f"{min(height, width)} and crop {height}x{width}.",
      "- A clip decoded as `[frames, height, width, 3]` becomes channels first with "
      "`tf.transpose(clip, [3, 0, 1, 2])`.",
      "",
      "## Output",
      "",
      f"{text['output']} The `serving_default` signature takes `video` and returns "
      f"`{{\"{key}\": ...}}` with the same tensor.",
      "",
      "## Usage",
      "",
      "TensorFlow 2 with tf_keras (`hub.KerasLayer` is a Keras 2 layer):",
      "",
      *tf_keras_snippet(model, text),
      "",
      "Keras 3 (`keras.layers.TFSMLayer` loads a local SavedModel directory; unpack the archive "
      f"first, e.g. `mkdir model && tar -xzf {version}.tar.gz -C model`):",
      "",
      "```python",
      "import keras",
      "",
      "backbone = keras.layers.TFSMLayer(",
      "    \"model\", call_endpoint=\"serving_default\", trainable=True)",
      f"inputs = keras.Input(shape={model.input_shape}, dtype=\"float32\")",
      *text["keras3"],
      f"model = keras.Model(inputs, {text['result']})",
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
      f"- {text['head']}",
      "- Use a lower learning rate for the backbone than for a new, randomly initialised head; "
      "the paper fine-tunes the backbone with a 10x smaller learning rate than the head.",
      f"- {precision_text(model)}",
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
      f"several views per video (frames per clip x clips x spatial crops). {head_note}, and the "
      f"numbers were not measured again with it.{measured_at}",
      "",
      "## References",
      "",
      f"1. {PAPER_CITATION}",
      f"2. Official implementation and model zoo: {OFFICIAL_REPO_URL}",
      f"3. Checkpoint: {', '.join(variant.checkpoint_urls)}",
      "",
  ])


def _model_table(versions: Sequence[Tuple[PublishedModel, int]]) -> List[str]:
  """A markdown table with a row per (model, version); names link to the model docs beside the
  collection doc (relative links resolve wherever the tree is served; tfhub.dev takes no models
  since 2024, so its URLs would not)."""
  rows = [
      "| model | backbone | window | pretrain | fine-tune | top-1 | top-5 | evaluation views "
      "| output |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for m, version in versions:
    v = m.variant
    name = f"[{m.name}](../../models/{m.name}/{version}.md)"
    arch = v.architecture
    rows.append(
        f"| {name} | {backbone_name(arch)} | {join(arch.window_size)} | "
        f"{v.pretrain_dataset.name} | {v.finetune_dataset.name} | {v.top1} | {v.top5} | "
        f"{v.eval_views} | `{m.output.key}` {batch_shape(m.output_shape)} |")
  return rows


def collection_doc(versions: Sequence[Tuple[PublishedModel, int]], publisher: str,
                   collection_name: str = COLLECTION_NAME) -> str:
  """The tfhub.dev collection doc linking one version doc of each model of `versions`."""
  models = [m for m, _ in versions]
  outputs = list(dict.fromkeys(m.output for m in models))
  input_shapes = list(dict.fromkeys(m.input_shape for m in models))
  returns = "; ".join(f"the {o.summary} (`{o.key}`)" for o in outputs)
  return "\n".join([
      f"# Collection {publisher}/{collection_name}/1",
      "Video Swin Transformer video models converted from the official checkpoints.",
      "",
      f"<!-- task: {outputs[0].task} -->",
      f"<!-- network-architecture: {NETWORK_ARCHITECTURE} -->",
      "",
      "## Overview",
      "",
      f"This collection holds {len(models)} Video Swin Transformer [1] models converted "
      "from the official PyTorch checkpoints [2] to fine-tunable TensorFlow 2 SavedModels. "
      f"They return {returns}, as the table says. The pooled feature serves as a video "
      "embedding or as the start of fine-tuning with a new head. The accuracies are the "
      "official numbers reported for the original checkpoints with their classifier heads "
      "(top-1/top-5 in %).",
      "",
      "## Models",
      "",
      *_model_table(versions),
      "",
      "## Input",
      "",
      f"- `video`: float32 `{' or '.join(batch_shape(shape) for shape in input_shapes)}`, "
      "channels first (batch, channels, frames, height, width), RGB in [0, 1]; the official "
      "mean/std normalisation is applied inside.",
      "- Frames: sample them as in the model's evaluation views (frames per clip with their "
      "sampling x clips x crops, in the table); each model's page spells the sampling out.",
      "- Output: float32, named in the table; the `serving_default` signature returns it under "
      "that name. The pooled feature is the mean over frames, height and width of the final "
      "LayerNorm feature map.",
      "",
      "## References",
      "",
      f"1. {PAPER_CITATION}",
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


def versions_of(manifests: Sequence[Dict[str, object]]) -> List[Tuple[PublishedModel, int]]:
  """(model, version) of each manifest whose identity names a registered model, in order."""
  found = []
  for manifest in manifests:
    try:
      found.append((published_models.from_identity(manifest["identity"]),
                    int(manifest["version"])))
    except (KeyError, TypeError, ValueError):
      continue  # a manifest of another tool or of an unregistered variant: not documented
  return found


def write_tree(output_dir: str, versions: Sequence[Tuple[PublishedModel, int]],
               publisher: str, asset_base_url: str,
               collection_name: str = COLLECTION_NAME) -> List[str]:
  """Writes the publisher page, one model doc per (model, version) and the collection doc (linking
  each model's newest version) under `output_dir/tfhub.dev/assets/docs`; returns the written paths."""
  if not versions:
    raise ValueError("no models to document")
  docs_root = os.path.join(output_dir, DOCS_DIR)
  newest = {model: version for model, version in sorted(versions, key=lambda v: v[1])}
  contents = [(publisher_doc_path(docs_root, publisher), publisher_doc(publisher))]
  contents += [(model_doc_path(docs_root, publisher, m.name, version),
                model_doc(m, version, publisher, asset_base_url)) for m, version in versions]
  contents.append((collection_doc_path(docs_root, publisher, collection_name),
                   collection_doc(list(newest.items()), publisher, collection_name)))
  for path, text in contents:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_text_atomically(path, text)
  return [path for path, _ in contents]
