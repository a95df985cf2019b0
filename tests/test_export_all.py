"""The batch export tool: SavedModel, archive, manifest and docs; refusals leave nothing behind."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import torch

import torch_reference
from conftest import SMALL_ARCH, normalise, relative_error, small_variant
from video_swin_hub.export import packaging
from video_swin_hub.export import pipeline
from video_swin_hub.export import published_models
from video_swin_hub.export.destinations import local
from video_swin_hub.export.docs import validator as validate_docs
from video_swin_hub.hub_models import variants

TINY = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = "2"
VERSION_DEFAULT = "1"


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "video_swin_hub.export.export_all", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)


def sha256(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def error_line(result):
  """The last stderr line, which the CLI's one-line error is."""
  return result.stderr.strip().splitlines()[-1]


def no_staging(root) -> bool:
  """Whether no staging folder is left (empty per-model folders may stay)."""
  return not [f for d, _, files in os.walk(root / local.STAGING_DIR) for f in files]


def visible_files(root):
  """Relative paths of everything under `root` (files and folders)."""
  return sorted(os.path.relpath(os.path.join(d, n), root)
                for d, dirs, files in os.walk(root) for n in dirs + files)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
  """A folder holding a random-weight official Swin-T checkpoint named after the variant."""
  folder = tmp_path_factory.mktemp("ckpts")
  reference = torch_reference.reference_model(TINY.architecture, TINY.num_classes, seed=7)
  torch_reference.save_official(reference, folder / f"{TINY.name}.pth")
  return folder


@pytest.fixture(scope="module")
def exported(checkpoint_dir, tmp_path_factory):
  """The output folder of one successful CLI run for Swin-T, version 2."""
  out = tmp_path_factory.mktemp("exports")
  result = run_cli(f"--variants={TINY.name}", f"--checkpoint_dir={checkpoint_dir}",
                   f"--output_dir={out}", f"--version={VERSION}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"[1/1] {TINY.name}: done" in result.stdout
  return out


def test_tree(exported):
  model_dir = exported / TINY.name
  assert sorted(os.listdir(model_dir)) == [VERSION, f"{VERSION}.manifest.json",
                                           f"{VERSION}.tar.gz"]
  assert (model_dir / VERSION / "saved_model.pb").is_file()
  docs_root = exported / "tfhub.dev" / "assets" / "docs"
  assert (docs_root / "video-swin-hub" / "video-swin-hub.md").is_file()
  assert (docs_root / "video-swin-hub" / "models" / TINY.name / f"{VERSION}.md").is_file()
  assert (docs_root / "video-swin-hub" / "collections" / "video-swin-transformer" /
          "1.md").is_file()
  assert validate_docs.validate_docs_root(str(docs_root)) == []
  assert no_staging(exported)


def test_archive_holds_the_savedmodel_at_its_root(exported):
  archive = exported / TINY.name / f"{VERSION}.tar.gz"
  assert validate_docs.validate_archive(str(archive)) == []
  with tarfile.open(archive) as tar:
    names = tar.getnames()
  assert names == sorted(names)
  assert "saved_model.pb" in names and "variables/variables.index" in names
  assert not any(name.startswith(("./", "/", VERSION)) for name in names)
  assert set(names) == set(visible_files(exported / TINY.name / VERSION))


def test_manifest(exported, checkpoint_dir):
  model_dir = exported / TINY.name
  with open(model_dir / f"{VERSION}.manifest.json", encoding="utf-8") as f:
    manifest = json.load(f)
  assert manifest["model"] == manifest["variant"] == TINY.name
  assert manifest["version"] == int(VERSION)
  assert manifest["archive_sha256"] == sha256(model_dir / f"{VERSION}.tar.gz")
  checkpoint = checkpoint_dir / f"{TINY.name}.pth"
  assert manifest["checkpoint_sha256"] == sha256(checkpoint)
  assert manifest["checkpoint_source"] == str(checkpoint)
  assert manifest["checkpoint_trust"] == "local file, not checked against a published digest"
  assert manifest["archive_bytes"] == os.path.getsize(model_dir / f"{VERSION}.tar.gz")
  assert manifest["identity"] == {"variant": TINY.name, "output": "features",
                                  "input_size": [32, 224, 224], "precision": "float32"}
  assert manifest["input"] == {"name": "video", "shape": [None, 3, 32, 224, 224],
                               "dtype": "float32", "range": [0, 1], "layout": "NCTHW"}
  assert manifest["output"] == {"name": "features", "shape": [None, 768], "dtype": "float32"}
  assert manifest["trainable_parameters"] == 27_850_470
  assert set(manifest["tools"]) == {"python", "tensorflow", "tf_keras", "tensorflow_hub", "numpy"}
  assert manifest["created_utc"].endswith("+00:00")


def test_existing_version_is_refused_untouched(exported, checkpoint_dir):
  before = {p: os.path.getmtime(exported / p) for p in visible_files(exported)}
  result = run_cli(f"--variants={TINY.name}", f"--checkpoint_dir={checkpoint_dir}",
                   f"--output_dir={exported}", f"--version={VERSION}")
  assert result.returncode == 1
  assert error_line(result).startswith("error: ") and "already exists" in error_line(result)
  assert {p: os.path.getmtime(exported / p) for p in visible_files(exported)} == before


def test_unknown_variant_writes_nothing(tmp_path, checkpoint_dir):
  out = tmp_path / "out"
  result = run_cli(f"--variants={TINY.name},swin_nano", f"--checkpoint_dir={checkpoint_dir}",
                   f"--output_dir={out}")
  assert result.returncode == 1
  assert "unknown variant 'swin_nano'" in error_line(result)
  assert TINY.name in error_line(result)
  assert not out.exists()


def test_missing_checkpoint_writes_nothing(tmp_path):
  out = tmp_path / "out"
  result = run_cli(f"--variants={TINY.name}", f"--checkpoint_dir={tmp_path}",
                   f"--output_dir={out}")
  assert result.returncode == 1
  assert error_line(result) == f"error: checkpoint {tmp_path / TINY.name}.pth not found"
  assert not out.exists()


def test_checkpoint_of_another_architecture_leaves_no_version(tmp_path):
  """Conversion fails part-way through the run: no version, no staging."""
  reference = torch_reference.reference_model(SMALL_ARCH, 10, seed=1)
  torch_reference.save_official(reference, tmp_path / f"{TINY.name}.pth")
  out = tmp_path / "out"
  result = run_cli(f"--variants={TINY.name}", f"--checkpoint_dir={tmp_path}",
                   f"--output_dir={out}")
  assert result.returncode == 1
  assert error_line(result).startswith("error: ")
  assert not (out / TINY.name).exists() and no_staging(out)


def test_failure_while_packing_leaves_nothing(tmp_path, monkeypatch):
  """A failure after the SavedModel is written and verified leaves neither files nor staging."""
  variant = small_variant()
  checkpoint = tmp_path / "small.pth"
  torch_reference.save_official(torch_reference.reference_model(variant.architecture, 10, seed=2),
                                checkpoint)

  def fail(*_):
    raise OSError("disk full")

  monkeypatch.setattr(packaging, "make_archive", fail)
  stages = []
  out = tmp_path / "out"
  with pytest.raises(OSError, match="disk full"):
    pipeline.publish(published_models.PublishedModel(variant),
                     pipeline.Checkpoint(str(checkpoint), str(checkpoint), "local file"),
                     local.LocalDestination(str(out)), 1, progress=stages.append)
  assert stages == ["converting", "exporting", "verifying", "packing"]
  assert [p for p in visible_files(out) if not p.startswith(".")] == [] and no_staging(out)


def test_make_archive_is_deterministic(tmp_path):
  savedmodel_dir = str(tmp_path / "sm")
  module = tf.Module()
  module.v = tf.Variable(1.0)
  tf.saved_model.save(module, savedmodel_dir)
  first, second = str(tmp_path / "a.tar.gz"), str(tmp_path / "b.tar.gz")
  packaging.make_archive(savedmodel_dir, first)
  os.utime(os.path.join(savedmodel_dir, "saved_model.pb"), (1, 1))  # mtimes must not matter
  packaging.make_archive(savedmodel_dir, second)
  assert sha256(first) == sha256(second)
  assert validate_docs.validate_archive(first) == []
  assert sorted(os.listdir(tmp_path)) == ["a.tar.gz", "b.tar.gz", "sm"]  # no temp files left


def test_corrupt_checkpoint_fails_its_model_only_and_docs_list_earlier_runs(
    exported, checkpoint_dir, tmp_path):
  """Two variants, one checkpoint corrupt: the other is published, the summary names the failure,
  and the docs list this run's version and the earlier run's (read back from the manifests)."""
  out = tmp_path / "out"
  shutil.copytree(exported, out)
  ckpts = tmp_path / "ckpts"
  shutil.copytree(checkpoint_dir, ckpts)
  broken = "swin_small_patch244_window877_kinetics400_1k"
  (ckpts / f"{broken}.pth").write_bytes(b"not a checkpoint")
  result = run_cli(f"--variants={broken},{TINY.name}", f"--checkpoint_dir={ckpts}",
                   f"--output_dir={out}", "--version=3")
  assert result.returncode == 1
  assert error_line(result).startswith(f"error: 1 of 2 models failed: {broken} (")
  assert re.search(rf"^{broken}\s+FAILED: .*{broken}\.pth", result.stdout, re.M), result.stdout
  assert sorted(os.listdir(out / TINY.name)) == sorted(
      [VERSION, f"{VERSION}.manifest.json", f"{VERSION}.tar.gz", "3", "3.manifest.json",
       "3.tar.gz"])
  assert not (out / broken).exists()
  docs_root = out / "tfhub.dev" / "assets" / "docs"
  models = docs_root / "video-swin-hub" / "models" / TINY.name
  assert sorted(os.listdir(models)) == [f"{VERSION}.md", "3.md"]
  assert validate_docs.validate_docs_root(str(docs_root)) == []


def test_every_output_at_another_input_size_matches_torchvision(tmp_path):
  """--outputs and --input_size: three Hub models, each equal to the reference's own output."""
  reference = torch_reference.reference_model(TINY.architecture, TINY.num_classes, seed=11)
  torch_reference.save_official(reference, tmp_path / f"{TINY.name}.pth")
  out = tmp_path / "out"
  result = run_cli(f"--variants={TINY.name}", f"--checkpoint_dir={tmp_path}",
                   f"--output_dir={out}", "--outputs=features,logits,feature_map",
                   "--input_size=8,112,112")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"[3/3] {TINY.name}_feature_map_8x112x112: done" in result.stdout

  video = np.random.RandomState(3).rand(2, 3, 8, 112, 112).astype(np.float32)
  with torch.no_grad():
    x = torch.from_numpy(normalise(video))
    feature_map = reference.norm(reference.features(reference.patch_embed(x)))
    pooled = feature_map.mean(dim=(1, 2, 3))
    expected = {"features": pooled.numpy(), "logits": reference.head(pooled).numpy(),
                "feature_map": feature_map.permute(0, 4, 1, 2, 3).numpy()}
  suffixes = {"features": "", "logits": "_classification", "feature_map": "_feature_map"}
  docs_root = out / "tfhub.dev" / "assets" / "docs"
  for key, suffix in suffixes.items():
    name = f"{TINY.name}{suffix}_8x112x112"
    layer = hub.KerasLayer(str(out / name / VERSION_DEFAULT), trainable=True)
    got = layer(video).numpy()
    assert got.shape == expected[key].shape, key
    assert relative_error(got, expected[key]) < 1e-5, key
    with open(out / name / f"{VERSION_DEFAULT}.manifest.json", encoding="utf-8") as f:
      manifest = json.load(f)
    assert manifest["output"]["name"] == key
    assert manifest["output"]["shape"] == [None, *expected[key].shape[1:]]
    assert manifest["input"]["shape"] == [None, 3, 8, 112, 112]
    assert (docs_root / "video-swin-hub" / "models" / name / f"{VERSION_DEFAULT}.md").is_file()
  assert validate_docs.validate_docs_root(str(docs_root)) == []
  # The classifier's head is part of what fine-tuning trains.
  classifier = hub.KerasLayer(str(out / f"{TINY.name}_classification_8x112x112" / "1"),
                              trainable=True)
  assert (packaging.parameter_count(classifier.trainable_weights)
          == 27_850_470 + 768 * 400 + 400)


def test_unknown_output_writes_nothing(tmp_path, checkpoint_dir):
  out = tmp_path / "out"
  result = run_cli(f"--variants={TINY.name}", f"--checkpoint_dir={checkpoint_dir}",
                   f"--output_dir={out}", "--outputs=features,embedding")
  assert result.returncode == 1
  assert error_line(result) == (
      "error: unknown output 'embedding'; valid outputs: features, logits, feature_map")
  assert not out.exists()


def test_killed_export_leaves_no_version_and_does_not_block_a_rerun(tmp_path, checkpoint_dir):
  """SIGKILL while the SavedModel is being written: nothing visible; the next run succeeds."""
  out = tmp_path / "out"
  process = subprocess.Popen(
      [sys.executable, "-m", "video_swin_hub.export.export_all", f"--variants={TINY.name}",
       f"--checkpoint_dir={checkpoint_dir}", f"--output_dir={out}", "--input_size=8,64,64"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  for line in process.stdout:
    if line.rstrip().endswith(": exporting"):
      break
  time.sleep(1)
  process.kill()
  process.wait()
  name = f"{TINY.name}_8x64x64"
  assert not (out / name).exists() or os.listdir(out / name) == []
  assert not (out / "tfhub.dev").exists()
  assert list((out / local.STAGING_DIR).rglob("*"))  # The killed run's leftovers, hidden.
  result = run_cli(f"--variants={TINY.name}", f"--checkpoint_dir={checkpoint_dir}",
                   f"--output_dir={out}", "--input_size=8,64,64")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "left by an interrupted export" in result.stdout
  assert sorted(os.listdir(out / name)) == ["1", "1.manifest.json", "1.tar.gz"]
  assert no_staging(out)
