"""bfloat16 exports (`--precision=bfloat16`): accuracy against torchvision's float32
SwinTransformer3d through the exported SavedModel, float32 variables that fine-tuning trains, the
precision in the model's name and identity, and the flag's refusal of other values.

Each model is converted from a random-weight torchvision checkpoint in the official layout by
`savedmodel.build_model` (what the export pipeline runs), saved and loaded back; its float32
`serving_default` output is compared with torchvision's float32 output on the same clip.
"""

import dataclasses
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras
import torch

import torch_reference
from conftest import normalise, relative_error, small_variant
from video_swin_hub.export import published_models
from video_swin_hub.export import savedmodel
from video_swin_hub.export.docs import kaggle
from video_swin_hub.export.docs import tfhub
from video_swin_hub.export.docs import validator
from video_swin_hub.hub_models import variants

REPO = pathlib.Path(__file__).resolve().parents[1]
BFLOAT16 = published_models.PRECISIONS["bfloat16"]
OUTPUTS = published_models.OUTPUTS
# bfloat16 keeps 8 significant bits (relative rounding 2^-9, about 2e-3); the models stay within
# 1e-2 of float32 (float32 exports are within 1e-5, see test_parity.py).
TOLERANCE = 1e-2
SMALL_SIZE = (8, 112, 112)


def inference_architecture(variant):
  """The architecture without its drop-path rate, which only training uses."""
  return dataclasses.replace(variant.architecture, drop_path_rate=0.0)


# The six collection variants have four architectures at inference (the three Swin-B 8x7x7
# variants differ only in their weights, classes and drop-path rates, which pooled features of
# random weights do not use): the first variant of each.
ARCHITECTURES = {}
for _variant in variants.collection():
  ARCHITECTURES.setdefault(inference_architecture(_variant), _variant)


def export_bf16(folder, variant, output_key, input_size, reference):
  """The loaded `serving_default` of `variant` with `reference`'s weights, exported in bfloat16."""
  torch_reference.save_official(reference, folder / "reference.pth")
  model = published_models.PublishedModel(variant, OUTPUTS[output_key], input_size, BFLOAT16)
  savedmodel.build_model(model, str(folder / "reference.pth")).save(str(folder / "model"))
  return tf.saved_model.load(str(folder / "model")).signatures["serving_default"]


def random_reference(variant, seed):
  """torchvision's float32 model of `variant` with random weights."""
  return torch_reference.reference_model(variant.architecture, variant.num_classes, seed)


def pooled_error(reference, serving, video01):
  """Relative error of the SavedModel's pooled features against torchvision float32."""
  got = serving(video=tf.constant(video01))["features"].numpy()
  want = torch_reference.reference_outputs(reference, normalise(video01))[0]
  assert got.dtype == np.float32 and got.shape == want.shape
  return relative_error(got, want)


def test_the_tested_architectures_cover_the_collection():
  assert len(list(variants.collection())) == 6
  assert sorted(v.name for v in ARCHITECTURES.values()) == [
      "swin_base_patch244_window1677_sthv2", "swin_base_patch244_window877_kinetics400_1k",
      "swin_small_patch244_window877_kinetics400_1k",
      "swin_tiny_patch244_window877_kinetics400_1k"]


@pytest.mark.parametrize("variant", list(ARCHITECTURES.values()), ids=lambda v: v.name)
def test_pooled_features_match_float32_reference(tmp_path, variant):
  reference = random_reference(variant, seed=11)
  serving = export_bf16(tmp_path, variant, "features", SMALL_SIZE, reference)
  video = np.random.RandomState(12).rand(1, 3, *SMALL_SIZE).astype(np.float32)
  error = pooled_error(reference, serving, video)
  print(f"{variant.name} bfloat16 {SMALL_SIZE}: relative error {error:.2e}")
  assert error < TOLERANCE


@pytest.mark.full_size
def test_swin_tiny_at_full_size_matches_float32_reference(tmp_path):
  variant = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
  reference = random_reference(variant, seed=13)
  serving = export_bf16(tmp_path, variant, "features", (32, 224, 224), reference)
  video = np.random.RandomState(14).rand(1, 3, 32, 224, 224).astype(np.float32)
  error = pooled_error(reference, serving, video)
  print(f"{variant.name} bfloat16 32x224x224: relative error {error:.2e}")
  assert error < TOLERANCE


def test_classifier_logits_agree_in_top1(tmp_path):
  variant = small_variant(num_classes=10)
  size = (8, 64, 64)
  video = np.random.RandomState(16).rand(6, 3, *size).astype(np.float32)
  reference = torch_reference.reference_model(variant.architecture, variant.num_classes, seed=15)
  # Random weights give every random clip the same class (their pooled features share one large
  # component). A head whose first rows are the clips' own centred features, unit length, with the
  # shared component taken out by the bias, gives clip i class i (Cauchy-Schwarz), so agreeing in
  # top-1 needs bfloat16 to keep what tells the clips apart.
  features = torch.from_numpy(torch_reference.reference_outputs(reference, normalise(video))[0])
  mean = features.mean(0)
  rows = (features - mean) / (features - mean).norm(dim=1, keepdim=True)
  with torch.no_grad():
    reference.head.weight.zero_()
    reference.head.weight[:6] = rows
    reference.head.bias.zero_()
    reference.head.bias[:6] = -rows @ mean
  want = torch_reference.reference_outputs(reference, normalise(video))[1]
  np.testing.assert_array_equal(want.argmax(-1), np.arange(6))
  serving = export_bf16(tmp_path, variant, "logits", size, reference)
  got = serving(video=tf.constant(video))["logits"].numpy()
  assert got.dtype == np.float32
  # Only top-1 is asserted: these logits are the small clip-specific part of the features (the
  # bias cancels the large shared part), which is where bfloat16's rounding weighs most.
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_fine_tuning_trains_every_float32_variable(tmp_path):
  variant = small_variant()
  size = (8, 56, 56)
  export_bf16(tmp_path, variant, "features", size, random_reference(variant, seed=17))
  layer = hub.KerasLayer(str(tmp_path / "model"), trainable=True)
  assert layer.trainable_weights and not layer.non_trainable_weights
  assert {w.dtype for w in layer.trainable_weights} == {tf.float32}
  inputs = tf_keras.Input([3, *size])
  # training=False keeps stochastic depth off, so every block gets a gradient in one step.
  model = tf_keras.Model(inputs, tf_keras.layers.Dense(4)(layer(inputs, training=False)))
  model.compile(tf_keras.optimizers.SGD(0.1),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  before = [w.numpy().copy() for w in layer.trainable_weights]
  model.fit(np.random.RandomState(18).rand(2, 3, *size).astype(np.float32), np.array([1, 3]),
            verbose=0)
  changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, layer.trainable_weights))
  assert changed == len(before)


def test_name_and_identity_carry_the_precision():
  tiny = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
  model = published_models.PublishedModel(tiny, OUTPUTS["logits"], (16, 160, 160), BFLOAT16)
  assert model.name == f"{tiny.name}_classification_bf16_16x160x160"
  assert published_models.PublishedModel(tiny, precision=BFLOAT16).name == f"{tiny.name}_bf16"
  record = published_models.identity(model)
  assert record["precision"] == "bfloat16"
  assert published_models.from_identity(record) == model


def test_manifest_identity_without_precision_is_float32():
  tiny = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
  written_before = {"variant": tiny.name, "output": "features", "input_size": [32, 224, 224]}
  model = published_models.from_identity(written_before)
  assert model.precision == published_models.PRECISIONS["float32"]
  assert model.name == tiny.name


def test_docs_say_what_each_precision_computes_in(tmp_path):
  tiny = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
  fp32 = published_models.PublishedModel(tiny)
  bf16 = published_models.PublishedModel(tiny, precision=BFLOAT16)
  publisher = tfhub.DEFAULT_PUBLISHER
  tfhub.write_tree(str(tmp_path), [(fp32, 1), (bf16, 1)], publisher, "https://example.com/m")
  docs_root = str(tmp_path / tfhub.DOCS_DIR)
  assert validator.validate_docs_root(docs_root) == []
  fp32_doc, bf16_doc = (pathlib.Path(tfhub.model_doc_path(docs_root, publisher, m.name, 1))
                        .read_text() for m in (fp32, bf16))
  assert "the model computes in float32" in fp32_doc and "bfloat16" not in fp32_doc
  assert bf16_doc.splitlines()[1].endswith("Computes in bfloat16.")
  for text in (bf16_doc, kaggle.variation_card(
      kaggle.PublishedVersion(bf16, 1, "https://example.com/v/1", "o/m/tensorFlow2/v/1")).overview):
    assert "matmuls, attention and MLP in bfloat16" in text
    assert "The archive holds float32 variables" in text


def test_unknown_precision_is_one_error_line(tmp_path):
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "video_swin_hub.export.export_savedmodel",
       "--variant=swin_tiny_patch244_window877_kinetics400_1k", f"--output_dir={out}",
       "--precision=bogus"],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert [line for line in lines if line.startswith("error")] == [lines[-1]]
  assert lines[-1] == "error: unknown precision 'bogus'; valid precisions: float32, bfloat16"
  assert not out.exists()
