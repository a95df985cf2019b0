"""The Colab notebooks, run top to bottom on a small exported model and a few synthetic videos."""

import ast
import json
import os
import sys

import av
import nbclient
import nbformat
import numpy as np
import pytest
import tensorflow as tf
from ipykernel import kernelspec

from conftest import export_small_model
from synthetic_videos import write_mp4

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
KERNEL_NAME = "video-swin-notebook-tests"
NUM_FRAMES, SIZE = 8, 56
# Two classes of frame shapes, so that the centre crop shows the synthetic gradients at different
# scales, with the frame size each is scaled to (short side SIZE) before the crop.
CLASSES = {"tall": ((96, 64), (84, 56)), "wide": ((64, 96), (56, 84))}
# Video lengths, with the frames an 8-frame clip at interval 2 takes from the middle of each; the
# 12-frame video is shorter than the 16-frame window and loops from its start.
CLIP_FRAMES = {12: [0, 2, 4, 6, 8, 10, 0, 2], 24: [4, 6, 8, 10, 12, 14, 16, 18],
               40: [12, 14, 16, 18, 20, 22, 24, 26]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return export_small_model(str(tmp_path_factory.mktemp("model") / "1"),
                            input_size=(NUM_FRAMES, SIZE, SIZE))


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  for class_index, (name, ((height, width), _)) in enumerate(CLASSES.items()):
    os.mkdir(root / name)
    for length in CLIP_FRAMES:
      write_mp4(root / name / f"{length}.mp4", length, height, width,
                seed=100 * class_index + length)
  return str(root)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
  """A kernelspec that runs this interpreter, found through JUPYTER_PATH.

  The default `python3` spec may resolve to another Python (a user-level install); this one names
  sys.executable, so the notebooks see the packages the tests run with.
  """
  prefix = tmp_path_factory.mktemp("jupyter")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    spec_dir = kernelspec.install(prefix=str(prefix), kernel_name=KERNEL_NAME,
                                  env={"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    with open(os.path.join(spec_dir, "kernel.json")) as f:
      assert json.load(f)["argv"][0] == sys.executable
    yield KERNEL_NAME


def read_notebook(name):
  return nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)


def default_parameters(nb):
  """The values the first cell, tagged "parameters", assigns."""
  first = nb.cells[0]
  assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
  return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(first.source).body
          if isinstance(node, ast.Assign)}


def run_notebook(name, parameters, workdir, kernel):
  """Executes notebooks/<name>.ipynb in `workdir` with `parameters` overriding its first cell.

  As papermill does, the overrides go into a cell of their own after the parameters cell, so the
  published defaults still run. A failing cell raises nbclient's CellExecutionError, which shows
  the cell and its traceback.
  """
  nb = read_notebook(name)
  unknown = set(parameters) - set(default_parameters(nb))
  assert not unknown, f"not parameters of {name}: {unknown}"
  source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
  injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
  nb.cells.insert(1, injected)
  nbclient.NotebookClient(nb, timeout=300, kernel_name=kernel,
                          resources={"metadata": {"path": str(workdir)}}).execute()
  return nb


def has_image(nb):
  return any("image/png" in output.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
             for output in cell.outputs)


def expected_clip(path, frame_shape, length):
  """The clip the notebooks should give the model, made here from the test's own numbers.

  Frames are scaled by PyAV as the notebooks do (the resampling is not what is tested); the frame
  choice, crop, channel order, value range and layout come from CLASSES and CLIP_FRAMES.
  """
  height, width = frame_shape
  with av.open(path) as container:
    frames = [frame.to_ndarray(format="rgb24", width=width, height=height,
                               interpolation="BILINEAR") for frame in container.decode(video=0)]
  assert len(frames) == length
  top, left = (height - SIZE) // 2, (width - SIZE) // 2
  clip = np.stack([frames[i][top:top + SIZE, left:left + SIZE] for i in CLIP_FRAMES[length]])
  return np.transpose(clip, [3, 0, 1, 2]).astype(np.float32) / 255.0


@pytest.mark.parametrize("name", ["feature_extraction", "fine_tuning"])
def test_committed_for_real_use(name):
  nb = read_notebook(name)
  nbformat.validate(nb)
  assert all(not cell.outputs and cell.execution_count is None for cell in nb.cells
             if cell.cell_type == "code")
  defaults = default_parameters(nb)
  assert defaults["MODEL_HANDLE"].startswith("https://") and defaults["MODEL_HANDLE"].endswith(
      "/swin_base_patch244_window877_kinetics400_22k/1.tar.gz")
  assert (defaults["SAMPLING"], defaults["FRAME_INTERVAL"]) == ("interval", 2)


def test_feature_extraction(model_dir, video_dir, kernel_name, tmp_path):
  output_dir = tmp_path / "features"
  nb = run_notebook("feature_extraction", {
      "MODEL_HANDLE": model_dir, "VIDEO_DIR": video_dir, "OUTPUT_DIR": str(output_dir),
      "BATCH_SIZE": 4}, tmp_path, kernel_name)

  expected_clips = {}
  for name, (_, scaled_shape) in CLASSES.items():
    for length in CLIP_FRAMES:
      path = os.path.join(video_dir, name, f"{length}.mp4")
      expected_clips[path] = expected_clip(path, scaled_shape, length)
  paths = (output_dir / "video_paths.txt").read_text().splitlines()
  assert paths == sorted(expected_clips)
  features = np.load(output_dir / "features.npy")
  assert features.shape == (len(paths), 192) and features.dtype == np.float32

  clips = np.stack([expected_clips[path] for path in paths])
  serve = tf.saved_model.load(model_dir).signatures["serving_default"]
  np.testing.assert_allclose(features, serve(video=tf.constant(clips))["features"].numpy(),
                             rtol=0, atol=1e-5)

  for figure in ("similarity.png", "pca.png"):
    assert (output_dir / figure).stat().st_size > 10_000
  assert has_image(nb)


def test_fine_tuning(model_dir, video_dir, kernel_name, tmp_path):
  output_dir = tmp_path / "fine_tuned"
  nb = run_notebook("fine_tuning", {
      "MODEL_HANDLE": model_dir, "DATA_DIR": video_dir, "OUTPUT_DIR": str(output_dir),
      "VALIDATION_FRACTION": 0.34, "EPOCHS": 2, "BATCH_SIZE": 2, "WARMUP_EPOCHS": 0.5,
      "HEAD_LEARNING_RATE": 1e-3, "BACKBONE_LEARNING_RATE": 1e-4}, tmp_path, kernel_name)

  assert (output_dir / "class_names.txt").read_text().split() == sorted(CLASSES)
  history = json.loads((output_dir / "history.json").read_text())
  # 4 training videos in batches of 2 for 2 epochs: 1 warm-up step from a tenth of the peak rate,
  # then a cosine over 3 steps.
  expected_head_lr = [1e-4, 1e-3, 1e-3 * 0.75, 1e-3 * 0.25]
  np.testing.assert_allclose(history["head_lr"], expected_head_lr, rtol=1e-5)
  np.testing.assert_allclose(history["backbone_lr"], np.multiply(expected_head_lr, 0.1), rtol=1e-5)
  assert len(history["loss"]) == 4
  assert len(history["val_accuracy"]) == 2
  assert np.all(np.isfinite(history["loss"]))

  original = tf.saved_model.load(model_dir)
  fine_tuned = tf.saved_model.load(str(output_dir / "model"))
  # tf_keras saves the model's trainable variables in order: the Hub layer's, then the head's.
  backbone = fine_tuned.trainable_variables[:-2]
  kernel, bias = fine_tuned.trainable_variables[-2:]
  assert (kernel.shape, bias.shape) == ((192, 2), (2,))
  assert ([(v.name, v.shape) for v in backbone]
          == [(v.name, v.shape) for v in original.trainable_variables])
  unchanged = [v.name for v, w in zip(backbone, original.trainable_variables)
               if np.array_equal(v.numpy(), w.numpy())]
  assert not unchanged

  videos = tf.random.uniform([3, 3, NUM_FRAMES, SIZE, SIZE], seed=1)
  logits = fine_tuned.signatures["serving_default"](video=videos)["logits"].numpy()
  assert logits.shape == (3, 2) and np.all(np.isfinite(logits))
  # Logits, not probabilities: rows of a softmax would sum to 1.
  assert not np.allclose(logits.sum(axis=1), 1.0, atol=1e-3)
  assert has_image(nb)
  assert (output_dir / "training_curves.png").stat().st_size > 10_000
