"""Kaggle Models pages: the model card of the collection and each variation's overview and usage.

Kaggle shows one model (the collection) with a markdown card, and per variation an overview and a
usage text. Every fact comes from the registry (`hub_models.variants`) and `PublishedModel`; every
handle is a Kaggle one, passed in by the destination, so the pages name what resolves where the
models are published.
"""

import dataclasses
from typing import List, Optional, Sequence, Tuple

from .. import published_models
from . import tfhub
from ...hub_models import variants as variants_lib

# The tfhub.dev writer's phrasing helpers are reused so that each fact has one wording everywhere.
# pylint: disable=protected-access

PublishedModel = published_models.PublishedModel

TITLE = "Video Swin Transformer"
SUBTITLE = ("Video Swin Transformer video feature extractors and classifiers: the official "
            "checkpoints as fine-tunable TensorFlow 2 SavedModels")
CITATION = "\n".join([
    "@article{liu2021video,",
    "  title={Video Swin Transformer},",
    "  author={Liu, Ze and Ning, Jia and Cao, Yue and Wei, Yixuan and Zhang, Zheng and Lin, "
    "Stephen and Hu, Han},",
    "  journal={arXiv preprint arXiv:2106.13230},",
    "  year={2021}",
    "}",
])
_EXTRACTION_TOOL = "python -m video_swin_hub.extraction.extract_features"
_HANDLE_PATTERN = "https://www.kaggle.com/models/OWNER/MODEL/tensorFlow2/VARIATION/VERSION"


@dataclasses.dataclass(frozen=True)
class ModelCard:
  """The Kaggle model's own fields."""
  title: str
  subtitle: str
  description: str  # markdown: the model card


@dataclasses.dataclass(frozen=True)
class VariationCard:
  """The fields of one variation (Kaggle's instance)."""
  overview: str  # markdown
  usage: str  # markdown
  license_name: str  # Kaggle's license name
  fine_tunable: bool
  training_data: Tuple[str, ...]  # the pages of the pretraining and fine-tuning datasets


@dataclasses.dataclass(frozen=True)
class PublishedVersion:
  """One version on Kaggle: the model, its number, its URL (the hub.KerasLayer handle) and its
  kagglehub handle (OWNER/MODEL/tensorFlow2/VARIATION/VERSION)."""
  model: PublishedModel
  version: int
  url: str
  kagglehub_handle: str


def _licenses(models: Sequence[PublishedModel]) -> List[str]:
  """One line per distinct weights license with the variants it covers."""
  by_license = {}
  for model in models:
    by_license.setdefault(model.variant.license, []).append(model.variant.name)
  return [f"- {lic.kaggle_name} ([text]({lic.url})): {', '.join(dict.fromkeys(names))}"
          for lic, names in by_license.items()]


def _input_lines(model: PublishedModel) -> List[str]:
  frames, height, width = model.input_size
  return [
      f"- `video`: float32 `{tfhub.batch_shape(model.input_shape)}`, channels first (batch, "
      "channels, frames, height, width). The batch size is free; the other sizes are fixed.",
      "- RGB values in [0, 1] (8-bit pixels divided by 255); the official mean/std "
      "normalisation is applied inside the model.",
      f"- Frames: {tfhub.frame_sampling(model.variant, frames)}.",
      f"- Size: resize the short side to at least {min(height, width)} and crop "
      f"{height}x{width}.",
  ]


def _row(model: PublishedModel, version_link: str) -> str:
  v = model.variant
  return (f"| `{model.name}` | {tfhub.backbone_name(v.architecture)} | "
          f"{tfhub.join(v.architecture.window_size)} | {v.pretrain_dataset.name} | "
          f"{v.finetune_dataset.name} | {v.top1} | {v.top5} | {v.eval_views} | "
          f"`{model.output.key}` `{tfhub.batch_shape(model.output_shape)}` | {version_link} |")


def model_card(versions: Sequence[PublishedVersion], model_url: Optional[str] = None,
               unpublished: Sequence[PublishedModel] = ()) -> ModelCard:
  """The card of the Kaggle model: a row per variation of `versions` (linking its newest
  version) and per model of `unpublished` (no link), then accuracy, input, loading, license,
  references and citation. `model_url` is the model's kaggle.com page, when it has one."""
  latest = {}
  for entry in sorted(versions, key=lambda e: (e.model.name, e.version)):
    latest[entry.model.name] = entry
  rows = [
      "| variation | backbone | window | pretrain | fine-tune | top-1 | top-5 | evaluation views "
      "| output | latest version |",
      "|---|---|---|---|---|---|---|---|---|---|",
      *(_row(e.model, f"[{e.version}]({e.url})") for e in latest.values()),
      *(_row(m, "not published") for m in unpublished if m.name not in latest),
  ]
  models = [e.model for e in latest.values()] + [m for m in unpublished if m.name not in latest]
  input_shapes = " or ".join(dict.fromkeys(f"`{tfhub.batch_shape(m.input_shape)}`"
                                           for m in models))
  example = next(iter(latest.values()), None)
  url = example.url if example else _HANDLE_PATTERN
  loading = [
      "```python",
      "import os",
      "os.environ[\"TF_USE_LEGACY_KERAS\"] = \"1\"  # hub.KerasLayer is a tf_keras layer.",
      "import tensorflow_hub as hub",
      "",
      f"layer = hub.KerasLayer(\"{url}\", trainable=True)",
      "```",
      "",
  ]
  description = "\n".join([
      f"# {TITLE}",
      "",
      f"Video Swin Transformer [1] models converted from the official PyTorch checkpoints [2, 3] "
      "to fine-tunable TensorFlow 2 SavedModels. Each variation is one model: a backbone with "
      "its pretraining and fine-tuning data, an output (the pooled feature, the classifier's "
      "logits or the final feature map) and an input size.",
      "",
      "## Variations",
      "",
      *rows,
      "",
      "## Accuracy and how it was measured",
      "",
      "Top-1 / top-5 accuracy in % on the fine-tuning dataset's validation set, as reported for "
      "the original PyTorch checkpoints with their classifier heads, averaging the predictions of "
      "the evaluation views (frames per clip with their sampling x temporal clips x spatial "
      "crops, short side resized to the crop size). They were not measured again with these "
      "SavedModels: the TensorFlow port is tested against torchvision's SwinTransformer3d on "
      "random weights (relative error below 1e-5), and each export is reloaded and compared "
      "with the model it was saved from before it is published.",
      "",
      "## Input",
      "",
      f"- `video`: float32 {input_shapes}, channels first (batch, channels, frames, height, "
      "width), RGB in [0, 1]; the official mean/std normalisation is applied inside.",
      "- Frames: sample them as in the evaluation views of the table; each variation's usage "
      "spells its sampling out.",
      "- Output: float32, named in the table; the `serving_default` signature returns it under "
      "that name.",
      "",
      "## Loading",
      "",
      "`hub.KerasLayer` takes a version's URL as its handle (tensorflow_hub downloads "
      "`?tf-hub-format=compressed`). It sends no credentials, so this needs the model to be "
      "public; `kagglehub.model_download(\"OWNER/MODEL/tensorFlow2/VARIATION/VERSION\")` also "
      "works for a private model with your Kaggle credentials and returns a local folder for "
      "`hub.KerasLayer` or Keras 3's `keras.layers.TFSMLayer`.",
      "",
      *loading,
      "## License",
      "",
      *_licenses(models),
      "",
      "## References",
      "",
      f"1. {tfhub.PAPER_CITATION}",
      f"2. Official implementation and model zoo: {tfhub.OFFICIAL_REPO_URL}",
      "3. mmaction2 (Swin-L and Kinetics-710 weights): https://github.com/open-mmlab/mmaction2",
      *([f"4. All variations: {model_url}"] if model_url else []),
      "",
      "## Citation",
      "",
      "```bibtex",
      CITATION,
      "```",
      "",
  ])
  return ModelCard(TITLE, SUBTITLE, description)


def variation_card(entry: PublishedVersion) -> VariationCard:
  """Overview, usage and fields of one variation, naming its Kaggle handles."""
  model = entry.model
  variant, arch = model.variant, model.variant.architecture
  if variant.license is None:
    raise ValueError(f"variant {variant.name} has no license in the registry")
  text = tfhub.output_text(model, entry.url)
  overview = "\n".join([
      f"# {model.name}",
      "",
      text["description"],
      "",
      f"The {tfhub.backbone_name(arch)} Video Swin Transformer (embedding dimension "
      f"{arch.embed_dim}, depths {tfhub.join(arch.depths, ', ')}, heads "
      f"{tfhub.join(arch.num_heads, ', ')}, window {tfhub.join(arch.window_size)}), pretrained "
      f"on {variant.pretrain_dataset.name} and fine-tuned on {variant.finetune_dataset.name} "
      f"with a {variant.num_classes}-way classifier, converted from the official checkpoint "
      f"{', '.join(variant.checkpoint_urls)}. {text['overview']}",
      "",
      f"Reported accuracy of the original checkpoint on {variant.finetune_dataset.name}: top-1 "
      f"{variant.top1}%, top-5 {variant.top5}% ({variant.eval_views}).",
      "",
      *([f"Precision: {tfhub.precision_text(model)}", ""]
        if model.precision.key != published_models.DEFAULT_PRECISION else []),
      "## Input",
      "",
      *_input_lines(model),
      "",
      "## Output",
      "",
      f"{text['output']} The `serving_default` signature returns "
      f"`{{\"{model.output.key}\": ...}}`.",
      "",
  ])
  usage = "\n".join([
      "TensorFlow 2 with tf_keras (needs the model public, see the model card; for a private "
      "model pass the folder from `kagglehub.model_download` instead of the URL):",
      "",
      *tfhub.tf_keras_snippet(model, text),
      "",
      "Keras 3, on the downloaded SavedModel (works for private models with Kaggle "
      "credentials):",
      "",
      "```python",
      "import kagglehub",
      "import keras",
      "",
      f"path = kagglehub.model_download(\"{entry.kagglehub_handle}\")",
      "backbone = keras.layers.TFSMLayer(path, call_endpoint=\"serving_default\", trainable=True)",
      f"inputs = keras.Input(shape={model.input_shape}, dtype=\"float32\")",
      *text["keras3"],
      f"model = keras.Model(inputs, {text['result']})",
      "```",
      "",
      "Features of a set of video files, with the extraction tool of the repository that "
      "published these models (the papers' Kinetics test views at this input size, one "
      "TFRecord example per video):",
      "",
      "```sh",
      f"{_EXTRACTION_TOOL} --model={entry.url} \\",
      "    --videos='/data/videos/*.mp4' --output=/data/features",
      "```",
      "",
      f"Fine-tuning: `hub.KerasLayer(..., trainable=True)` trains the backbone with stochastic "
      f"depth (drop-path rate {arch.drop_path_rate}); {text['head']}",
      "",
  ])
  training_data = tuple(dict.fromkeys(
      d.url for d in (variant.pretrain_dataset, variant.finetune_dataset)))
  return VariationCard(overview=overview, usage=usage, license_name=variant.license.kaggle_name,
                       fine_tunable=True, training_data=training_data)


def repository_model_card() -> str:
  """The repository's collection.md: the model card over every registered model (the pooled-
  feature model of each variant, unpublished: a publication's card links its versions)."""
  registered = [PublishedModel(v) for v in variants_lib.collection()]
  registered += [PublishedModel(v) for v in variants_lib.VARIANTS.values() if not v.in_collection]
  return model_card([], unpublished=registered).description
