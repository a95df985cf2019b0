"""Keras 3 fine-tuning with Adam and AdamW: the README's recipe, run as written in a process
without TF_USE_LEGACY_KERAS, and the TFSMLayer failure it exists to avoid."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import SMALL_ARCH
from video_swin_hub.hub_models.backbone import VideoSwinBackbone
from video_swin_hub.hub_models.hub_module import FeatureExtractor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_HANDLE = "exports/swin_tiny_patch244_window877_kinetics400_1k/1"
README_OPTIMIZER = "keras.optimizers.AdamW(1e-4)"

# Runs in the child: the recipe once per optimizer, then TFSMLayer with Adam.
CHECKS = r"""
import json, os
import numpy as np

def fine_tune(model, weights):
  video = np.random.RandomState(0).rand(4, 3, 6, 40, 48).astype("float32")
  before = [v.numpy().copy() for v in weights]
  untrained = model.predict(video, verbose=0)
  model.fit(video, np.array([1, 2, 3, 4]), batch_size=4, verbose=0)
  return {"variables": len(weights),
          "changed": sum(not np.array_equal(b, v.numpy()) for b, v in zip(before, weights)),
          "output_change": float(np.abs(model.predict(video, verbose=0) - untrained).max())}

results = {"legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"), "keras": keras.__version__}
for optimizer in ("AdamW", "Adam"):
  scope = {}
  exec(RECIPE.replace(README_OPTIMIZER, f"keras.optimizers.{optimizer}(1e-4)"), scope)
  layer = scope["model"].layers[1]
  results[optimizer] = fine_tune(scope["model"], layer.hub_model.trainable_variables)
  results[optimizer]["keras_weights"] = len(layer.trainable_weights)

tfsm = keras.layers.TFSMLayer(HANDLE, call_endpoint="serving_dynamic", trainable=True)
inputs = keras.Input([3, None, None, None])
model = keras.Model(inputs, keras.layers.Dense(10)(tfsm(inputs)["features"]))
model.compile(keras.optimizers.Adam(1e-4),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
try:
  fine_tune(model, tfsm._reloaded_obj.trainable_variables)
  results["tfsm_adam"] = "trained"
except ValueError as error:
  results["tfsm_adam"] = str(error)
print("RESULTS " + json.dumps(results))
"""


def readme_recipe() -> str:
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  match = re.search(r"<!-- keras3-recipe -->\n```python\n(.*?)```", readme, re.DOTALL)
  assert match, "README.md has no Keras 3 recipe"
  recipe = match.group(1)
  assert README_HANDLE in recipe and README_OPTIMIZER in recipe
  return recipe


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  """A small feature extractor without stochastic depth, so that one step reaches every block."""
  tf.keras.utils.set_random_seed(3)
  backbone = VideoSwinBackbone(dataclasses.replace(SMALL_ARCH, drop_path_rate=0.0))
  path = str(tmp_path_factory.mktemp("keras3") / "model")
  FeatureExtractor(backbone, input_size=(8, 56, 56)).save(path)
  return path, len(backbone.trainable_variables)


def test_readme_recipe_fine_tunes_every_variable_with_adam_and_adamw(model_path):
  path, num_variables = model_path
  recipe = readme_recipe().replace(README_HANDLE, path)
  program = "\n".join([
      f"RECIPE = {recipe!r}", f"README_OPTIMIZER = {README_OPTIMIZER!r}", f"HANDLE = {path!r}",
      "import keras", CHECKS])
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  result = subprocess.run([sys.executable, "-c", program], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  (line,) = [l for l in result.stdout.splitlines() if l.startswith("RESULTS ")]
  results = json.loads(line[len("RESULTS "):])
  assert results["legacy_keras"] is None and results["keras"].startswith("3.")
  for optimizer in ("AdamW", "Adam"):
    trained = results[optimizer]
    assert trained["variables"] == trained["keras_weights"] == num_variables
    assert trained["changed"] == num_variables, (optimizer, trained)
    assert trained["output_change"] > 1e-3, (optimizer, trained)
  # What the recipe avoids: TFSMLayer's weights are named "...:0" and Adam cannot name its slots.
  assert "is not a valid scope name" in results["tfsm_adam"]
  assert ":0_momentum" in results["tfsm_adam"]
