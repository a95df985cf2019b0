"""The export tool end to end: a random-weight official checkpoint -> a fine-tunable Hub model."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras
import torch

import torch_reference
from conftest import normalise, relative_error
from video_swin_hub.export import errors
from video_swin_hub.export import packaging
from video_swin_hub.export import published_models
from video_swin_hub.export import savedmodel
from video_swin_hub.hub_models import checkpoint, conversion, variants

TINY = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  reference = torch_reference.reference_model(TINY.architecture, TINY.num_classes, seed=5)
  path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
  torch_reference.save_official(reference, path, meta={"epoch": 30})
  return reference, str(path)


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
  _, path = tiny_checkpoint
  out = tmp_path_factory.mktemp("exports")
  result = run_cli(f"--variant={TINY.name}", f"--checkpoint={path}", f"--output_dir={out}",
                   "--version=3")
  assert result.returncode == 0, result.stderr
  return os.path.join(out, TINY.name, "3")


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "video_swin_hub.export.export_savedmodel", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)


def test_savedmodel_contract(exported):
  assert os.path.isfile(os.path.join(exported, "saved_model.pb"))
  loaded = tf.saved_model.load(exported)
  serving = loaded.signatures["serving_default"]
  (spec,) = serving.structured_input_signature[1].values()
  assert spec.shape.as_list() == [None, 3, 32, 224, 224] and spec.dtype == tf.float32
  assert serving.structured_outputs["features"].shape.as_list() == [None, 768]
  assert len(loaded.trainable_variables) == len(loaded.variables) > 0
  assert list(loaded.regularization_losses) == []


def test_graph_is_lean(exported):
  """No per-block constants: the graph is a small fraction of the weights."""
  graph = os.path.getsize(os.path.join(exported, "saved_model.pb"))
  weights = sum(os.path.getsize(os.path.join(root, name))
                for root, _, names in os.walk(os.path.join(exported, "variables"))
                for name in names)
  assert weights > 27_850_470 * 4
  assert graph < 0.05 * weights


def test_keras_layer_matches_reference_at_full_size(exported, tiny_checkpoint):
  reference, _ = tiny_checkpoint
  video = np.random.RandomState(6).rand(2, 3, 32, 224, 224).astype(np.float32)
  want, _ = torch_reference.reference_outputs(reference, normalise(video))
  layer = hub.KerasLayer(exported)
  got = layer(video).numpy()
  assert got.shape == (2, 768)
  assert relative_error(got, want) < 1e-5
  serving = tf.saved_model.load(exported).signatures["serving_default"]
  assert relative_error(serving(video=tf.constant(video[:1]))["features"].numpy(), want[:1]) < 1e-5


def test_fine_tuning_trains_every_backbone_parameter(exported):
  layer = hub.KerasLayer(exported, trainable=True)
  inputs = tf_keras.Input([3, 32, 224, 224])
  # training=False keeps stochastic depth off, so every block gets a gradient in one step.
  model = tf_keras.Model(inputs, tf_keras.layers.Dense(4)(layer(inputs, training=False)))
  assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == 27_850_470
  assert not layer.non_trainable_weights
  model.compile(tf_keras.optimizers.SGD(0.1),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  before = [w.numpy().copy() for w in layer.trainable_weights]
  model.fit(np.random.rand(1, 3, 32, 224, 224).astype(np.float32), np.array([2]), verbose=0)
  changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, layer.trainable_weights))
  assert changed == len(before)


def test_training_flag_enables_stochastic_depth(exported):
  loaded = tf.saved_model.load(exported)
  video = tf.random.uniform([2, 3, 32, 224, 224], seed=1)
  inference = [loaded(video, training=False).numpy() for _ in range(2)]
  np.testing.assert_array_equal(inference[0], inference[1])
  training = loaded(video, training=True).numpy()
  assert not np.allclose(training, inference[0])


def test_existing_version_is_not_overwritten(exported, tiny_checkpoint):
  _, path = tiny_checkpoint
  before = os.path.getmtime(os.path.join(exported, "saved_model.pb"))
  result = run_cli(f"--variant={TINY.name}", f"--checkpoint={path}",
                   f"--output_dir={os.path.dirname(os.path.dirname(exported))}", "--version=3")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "already exists" in last
  assert os.path.getmtime(os.path.join(exported, "saved_model.pb")) == before


def test_export_is_export_all_for_one_model(exported):
  """The same pipeline: archive and manifest beside the SavedModel, docs for the version."""
  out = os.path.dirname(os.path.dirname(exported))
  assert sorted(os.listdir(os.path.dirname(exported))) == ["3", "3.manifest.json", "3.tar.gz"]
  assert os.path.isfile(os.path.join(out, "tfhub.dev", "assets", "docs", "video-swin-hub",
                                     "models", TINY.name, "3.md"))


def test_verify_rejects_a_savedmodel_that_differs_from_the_model(exported, tiny_checkpoint):
  """packaging.verify compares the reloaded SavedModel with the in-memory model: it passes for the
  model the SavedModel was saved from, and fails once one weight of the in-memory model moved."""
  _, path = tiny_checkpoint
  model = published_models.PublishedModel(TINY)
  root = savedmodel.build_model(model, path)
  packaging.verify(exported, root, model)
  variable = max(root.trainable_variables, key=lambda v: v.shape.num_elements())
  variable.assign_add(tf.fill(variable.shape, 1e-2))
  with pytest.raises(errors.ExportError, match="differs from the in-memory model"):
    packaging.verify(exported, root, model)


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def write_checkpoint(path, state, meta=None):
  payload = {"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}}
  if meta is not None:
    payload["meta"] = meta
  torch.save(payload, path)


@pytest.fixture(scope="module")
def tiny_state(tiny_checkpoint):
  reference, _ = tiny_checkpoint
  return {k: v.numpy() for k, v in
          torch_reference.torchvision_to_official(reference.state_dict()).items()}


def refusal_cases(tmp_path, state):
  """(checkpoint path, variant, expected message fragment) for each kind of bad input."""
  cases = []
  marker = tmp_path / "pwned"
  path = tmp_path / "runs_code.pth"
  write_checkpoint(path, state, meta=_RunsCode(marker))
  cases.append((path, TINY.name, "refused to call posix.system", marker))

  path = tmp_path / "truncated.pth"
  write_checkpoint(path, state)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  cases.append((path, TINY.name, "truncated", None))

  missing = dict(state)
  del missing["backbone.layers.3.blocks.1.attn.proj.bias"]
  path = tmp_path / "missing.pth"
  write_checkpoint(path, missing)
  cases.append((path, TINY.name, "missing key backbone.layers.3.blocks.1.attn.proj.bias", None))

  shaped = dict(state)
  shaped["backbone.norm.weight"] = np.ones([700], np.float32)
  path = tmp_path / "shape.pth"
  write_checkpoint(path, shaped)
  cases.append((path, TINY.name, "backbone.norm.weight has shape [700]", None))

  path = tmp_path / "k400.pth"
  write_checkpoint(path, state)
  k710 = "swin_small_patch244_window877_kinetics710_1k"
  cases.append((path, k710, "400 classes but variant", None))
  cases.append((path, "swin_base_patch244_window1677_sthv2", "has shape", None))
  return cases


def test_cli_refusals_leave_nothing_behind(tmp_path, tiny_state):
  out = tmp_path / "out"
  for path, variant, fragment, marker in refusal_cases(tmp_path, tiny_state):
    result = run_cli(f"--variant={variant}", f"--checkpoint={path}", f"--output_dir={out}")
    assert result.returncode != 0, (path, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last, (fragment, result.stderr)
    assert str(path) in last or "missing key" in last or "shape" in last or "classes" in last
    assert not out.exists() or not any(out.iterdir()), f"{path} left files in {out}"
    if marker is not None:
      assert not marker.exists(), "the checkpoint's code ran"


def test_unknown_variant_lists_valid_names(tmp_path):
  result = run_cli("--variant=swin_huge", "--checkpoint=x.pth", f"--output_dir={tmp_path}")
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert "unknown variant 'swin_huge'" in last
  for name in variants.VARIANTS:
    assert name in last


def test_classification_export_gives_the_reference_logits(tiny_checkpoint, tmp_path):
  reference, path = tiny_checkpoint
  result = run_cli(f"--variant={TINY.name}", f"--checkpoint={path}", f"--output_dir={tmp_path}",
                   "--output=logits", "--input_size=8,64,64")
  assert result.returncode == 0, result.stderr[-3000:]
  layer = hub.KerasLayer(str(tmp_path / f"{TINY.name}_classification_8x64x64" / "1"))
  video = np.random.RandomState(4).rand(2, 3, 8, 64, 64).astype(np.float32)
  _, logits = torch_reference.reference_outputs(reference, normalise(video))
  assert relative_error(layer(video).numpy(), logits) < 1e-5


def test_bad_input_size_writes_nothing(tiny_checkpoint, tmp_path):
  _, path = tiny_checkpoint
  result = run_cli(f"--variant={TINY.name}", f"--checkpoint={path}", f"--output_dir={tmp_path}",
                   "--input_size=8,x,64")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "error: input size must be integers; got '8,x,64'")
  assert not any(tmp_path.iterdir())
