"""The tfhub.dev docs: generated from the registry, valid under tfhub.dev's rules, and a validator
that catches each kind of broken doc and archive."""

import io
import os
import re
import subprocess
import sys
import tarfile

import pytest

from video_swin_hub.export import files
from video_swin_hub.export.docs import kaggle as kaggle_docs
from video_swin_hub.export.docs import tfhub as docs
from video_swin_hub.export import published_models
from video_swin_hub.export.docs import validator as validate_docs
from video_swin_hub.hub_models import variants

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLISHER = "test-publisher"
ASSET_BASE_URL = "https://storage.googleapis.com/test-bucket/models"
TINY = "swin_tiny_patch244_window877_kinetics400_1k"
REGENERATE = ("python -m video_swin_hub.export.write_docs --output_dir=/tmp/video_swin_docs "
              f"--asset_base_url={ASSET_BASE_URL} --write_collection_md=collection.md")


def _write_text(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_text_atomically(path, text)


def _write(tmp_path, names, version=1):
  """Writes the docs of `names` under tmp_path; returns the docs root and the written paths."""
  models = [published_models.PublishedModel(variants.get(n)) for n in names]
  paths = docs.write_tree(str(tmp_path), [(m, version) for m in models], PUBLISHER, ASSET_BASE_URL)
  return os.path.join(str(tmp_path), docs.DOCS_DIR), paths


def _metadata(text):
  """(key, value) pairs of a doc's metadata lines, in order."""
  return re.findall(r"^<!-- ([\w-]+): (.*) -->$", text, flags=re.MULTILINE)


def _model_doc(name, version=1, output="features", input_size=(32, 224, 224)):
  model = published_models.PublishedModel(variants.get(name), published_models.get_output(output),
                                          input_size)
  return docs.model_doc(model, version, PUBLISHER, ASSET_BASE_URL)


def test_generated_tree_of_all_variants_is_valid(tmp_path):
  docs_root, paths = _write(tmp_path, sorted(variants.VARIANTS), version=3)
  assert validate_docs.validate_docs_root(docs_root) == []
  publisher_dir = os.path.join(docs_root, PUBLISHER)
  assert paths[0] == os.path.join(publisher_dir, f"{PUBLISHER}.md")
  assert paths[-1] == os.path.join(publisher_dir, "collections", docs.COLLECTION_NAME, "1.md")
  assert sorted(paths[1:-1]) == sorted(
      os.path.join(publisher_dir, "models", name, "3.md") for name in variants.VARIANTS)
  # Atomic writes leave no temporary files behind.
  written = {os.path.join(d, f) for d, _, files in os.walk(docs_root) for f in files}
  assert written == set(paths)


def test_checked_in_collection_md_is_up_to_date():
  with open(os.path.join(REPO_ROOT, "collection.md"), encoding="utf-8") as f:
    checked_in = f.read()
  assert checked_in == kaggle_docs.repository_model_card(), (
      f"collection.md is out of date with hub_models/variants.py; regenerate it with: {REGENERATE}")


def test_model_doc_header():
  text = _model_doc(TINY, version=2)
  lines = text.split("\n")
  assert lines[0] == f"# Module {PUBLISHER}/{TINY}/2"
  assert lines[1] and not lines[1].startswith(("#", "<!--"))
  assert _metadata(text) == [
      ("asset-path", f"{ASSET_BASE_URL}/{TINY}/2.tar.gz"),
      ("task", "video-feature-extraction"),
      ("network-architecture", "video-swin-transformer"),
      ("format", "saved_model_2"),
      ("fine-tunable", "true"),
      ("license", "apache-2.0"),
      ("dataset", "imagenet-ilsvrc-2012-cls"),
      ("dataset", "kinetics-400"),
  ]
  for section in ("Overview", "Input", "Output", "Usage", "Fine-tuning", "Accuracy",
                  "References"):
    assert f"\n## {section}\n" in text


def test_k600_doc_names_kinetics600_and_imagenet21k():
  text = _model_doc("swin_base_patch244_window877_kinetics600_22k")
  assert {v for k, v in _metadata(text) if k == "dataset"} == {"kinetics-600", "imagenet-21k"}
  assert "ImageNet-22K" in text and "ImageNet-1K" not in text
  assert "| 84.0 | 96.5 |" in text


def test_base_1k_doc_reports_the_official_top5():
  text = _model_doc("swin_base_patch244_window877_kinetics400_1k")
  assert "| 80.6 | 94.6 |" in text and "96.6" not in text


def test_sthv2_doc_has_no_ssv2_dataset_id_but_names_it():
  text = _model_doc("swin_base_patch244_window1677_sthv2")
  assert [v for k, v in _metadata(text) if k == "dataset"] == ["kinetics-400"]
  assert "Something-Something V2" in text
  assert "sampled uniformly" in text and "interval of 2" not in text
  assert "window 16x7x7" in text


def test_kinetics_doc_samples_frames_at_interval_2():
  text = _model_doc(TINY)
  assert "32 frames taken at a temporal interval of 2" in text
  assert "[batch, 3, 32, 224, 224]" in text


@pytest.mark.parametrize("name,size", [
    (TINY, 768),
    ("swin_small_patch244_window877_kinetics400_1k", 768),
    ("swin_base_patch244_window877_kinetics400_22k", 1024),
    ("swin_large_patch244_window877_kinetics700_22k", 1536),
])
def test_model_doc_states_the_feature_size(name, size):
  text = _model_doc(name)
  assert f"`[batch, {size}]`" in text
  assert f"[batch, {size}, 16, 7, 7]" in text


def test_model_doc_usage_examples():
  text = _model_doc(TINY)
  assert 'os.environ["TF_USE_LEGACY_KERAS"] = "1"' in text
  assert text.index("TF_USE_LEGACY_KERAS") < text.index("import tensorflow as tf")
  assert f'hub.KerasLayer("{ASSET_BASE_URL}/{TINY}/1.tar.gz", trainable=True)' in text
  assert 'call_endpoint="serving_default", trainable=True' in text
  assert 'backbone(inputs)["features"]' in text


def test_classification_doc():
  name = f"{TINY}_classification"
  text = _model_doc(TINY, version=2, output="logits")
  assert text.startswith(f"# Module {PUBLISHER}/{name}/2\n")
  assert ("task", "video-classification") in _metadata(text)
  assert ("asset-path", f"{ASSET_BASE_URL}/{name}/2.tar.gz") in _metadata(text)
  assert "`[batch, 400]`" in text and '`{"logits": ...}`' in text
  assert 'backbone(inputs)["logits"]' in text
  assert "This SavedModel keeps that head" in text


def test_feature_map_doc_at_another_input_size():
  name = f"{TINY}_feature_map_16x160x160"
  text = _model_doc(TINY, output="feature_map", input_size=(16, 160, 160))
  assert text.startswith(f"# Module {PUBLISHER}/{name}/1\n")
  assert ("task", "video-feature-extraction") in _metadata(text)
  # 16 frames / 2 = 8; 160 / 4 = 40, halved three times with rounding up: 20, 10, 5.
  assert "`[batch, 768, 8, 5, 5]`" in text and '`{"feature_map": ...}`' in text
  assert "[batch, 3, 16, 160, 160]" in text
  assert "16 frames taken at a temporal interval of 2" in text
  assert "measured on 32x224x224 clips; this model takes 16x160x160" in text


def test_tree_of_every_output_is_valid(tmp_path):
  models = [published_models.PublishedModel(variants.get(TINY), output, (16, 160, 160))
            for output in published_models.OUTPUTS.values()]
  paths = docs.write_tree(str(tmp_path), [(m, 1) for m in models], PUBLISHER, ASSET_BASE_URL)
  assert validate_docs.validate_docs_root(os.path.join(str(tmp_path), docs.DOCS_DIR)) == []
  collection = open(paths[-1], encoding="utf-8").read()
  for model in models:
    assert f"[{model.name}](../../models/{model.name}/1.md)" in collection
  assert "https://tfhub.dev" not in collection


# Each edit breaks a valid model doc in one way; the problem must name the doc and this text.
BROKEN_MODEL_DOCS = {
    "wrong first line": (lambda t: t.replace(f"# Module {PUBLISHER}/{TINY}/1",
                                             f"# Module {PUBLISHER}/other_model/1"),
                         1, "first line must be"),
    "not a module line": (lambda t: t.replace("# Module ", "# Model ", 1), 1,
                          "first line must be"),
    "missing description": (lambda t: re.sub(r"\A(.*\n).*\n", r"\1", t), 3,
                            "missing the one-line description"),
    "unknown key": (lambda t: t.replace("<!-- format:", "<!-- colour: blue -->\n<!-- format:"), 7,
                    "'colour' is not allowed"),
    "missing asset-path": (lambda t: re.sub(r"<!-- asset-path: .* -->\n", "", t), 1,
                           "'asset-path' is missing"),
    "asset on github.com": (
        lambda t: t.replace("https://storage.googleapis.com/test-bucket",
                            "https://github.com/someone/repo/releases/download"),
        4, "github.com"),
    "asset not tar.gz": (lambda t: t.replace("1.tar.gz -->", "1.zip -->"), 4,
                         "must end with .tar.gz"),
    "bad format": (lambda t: t.replace("format: saved_model_2", "format: saved_model"), 7,
                   "format 'saved_model' is not one of"),
    "bad task": (lambda t: t.replace("task: video-feature-extraction", "task: video-magic"), 5,
                 "task 'video-magic' is not one of"),
    "bad fine-tunable": (lambda t: t.replace("fine-tunable: true", "fine-tunable: yes"), 8,
                         "fine-tunable 'yes' is not one of"),
    "duplicate single-valued key": (
        lambda t: t.replace("<!-- license:", "<!-- fine-tunable: false -->\n<!-- license:"), 9,
        "'fine-tunable' may appear only once"),
    "content between metadata and heading": (
        lambda t: t.replace("\n## Overview", "Some words.\n\n## Overview", 1), 12,
        "only <!-- key: value --> metadata lines"),
    "malformed metadata": (lambda t: t.replace("<!-- license: apache-2.0 -->",
                                               "<!-- license apache-2.0 -->"), 9,
                           "malformed metadata line"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_MODEL_DOCS))
def test_validator_catches_broken_model_doc(tmp_path, case):
  edit, line, message = BROKEN_MODEL_DOCS[case]
  docs_root, _ = _write(tmp_path, [TINY])
  path = docs.model_doc_path(docs_root, PUBLISHER, TINY, 1)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  broken = edit(text)
  assert broken != text
  with open(path, "w", encoding="utf-8") as f:
    f.write(broken)
  problems = validate_docs.validate_docs_root(docs_root)
  assert any(p.startswith(f"{path}:{line}: ") and message in p for p in problems), problems


def test_validator_catches_collection_linking_a_model_without_doc(tmp_path):
  docs_root, _ = _write(tmp_path, [TINY, "swin_base_patch244_window1677_sthv2"])
  os.remove(docs.model_doc_path(docs_root, PUBLISHER, "swin_base_patch244_window1677_sthv2", 1))
  problems = validate_docs.validate_docs_root(docs_root)
  assert len(problems) == 1, problems
  collection = docs.collection_doc_path(docs_root, PUBLISHER, docs.COLLECTION_NAME)
  assert problems[0].startswith(f"{collection}:")
  assert ("'../../models/swin_base_patch244_window1677_sthv2/1.md', which has no model doc"
          in problems[0])


def test_validator_requires_a_model_link_and_task_in_collection(tmp_path):
  docs_root, _ = _write(tmp_path, [TINY])
  collection = docs.collection_doc_path(docs_root, PUBLISHER, docs.COLLECTION_NAME)
  _write_text(collection, "\n".join([
      f"# Collection {PUBLISHER}/{docs.COLLECTION_NAME}/1", "No models here.", "",
      "## Overview", "", "Nothing.", ""]))
  problems = validate_docs.validate_docs_root(docs_root)
  assert any("must link at least one model" in p for p in problems), problems
  assert any("'task' is missing" in p for p in problems), problems


def test_validator_accepts_relative_model_links(tmp_path):
  docs_root, _ = _write(tmp_path, [TINY])
  collection = docs.collection_doc_path(docs_root, PUBLISHER, docs.COLLECTION_NAME)
  _write_text(collection, "\n".join([
      f"# Collection {PUBLISHER}/{docs.COLLECTION_NAME}/1", "One model.", "",
      "<!-- task: video-feature-extraction -->", "", "## Models", "",
      f"- [tiny](../../models/{TINY}/1.md)", f"- [gone](../../models/{TINY}/2.md)", ""]))
  problems = validate_docs.validate_docs_root(docs_root)
  assert len(problems) == 1 and f"{collection}:9: links model" in problems[0], problems


def test_validator_catches_missing_publisher_page(tmp_path):
  docs_root, paths = _write(tmp_path, [TINY])
  os.remove(paths[0])
  problems = validate_docs.validate_docs_root(docs_root)
  assert len(problems) == 1 and "has no publisher page" in problems[0], problems


def test_validator_catches_misplaced_files(tmp_path):
  docs_root, _ = _write(tmp_path, [TINY])
  stray = os.path.join(docs_root, PUBLISHER, "models", "loose.md")
  _write_text(stray, _model_doc(TINY))
  problems = validate_docs.validate_docs_root(docs_root)
  assert problems == [f"{stray}:0: not a place for a tfhub.dev doc (expected <publisher>/"
                      "<publisher>.md, <publisher>/models/<name>/<version>.md or "
                      "<publisher>/collections/<name>/1.md)"]


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory):
  """A real (tiny) SavedModel directory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("tiny_saved_model"))
  tf.saved_model.save(tf.Module(), path)
  return path


def _archive(path, saved_model_dir, arcname=".", extra=()):
  """Writes a tar.gz of `saved_model_dir` under `arcname`, plus `extra` (name, bytes) members."""
  with tarfile.open(path, "w:gz") as tar:
    if saved_model_dir:
      tar.add(saved_model_dir, arcname=arcname)
    for name, data in extra:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return str(path)


def test_archive_of_a_real_saved_model_is_valid(tmp_path, saved_model_dir):
  archive = _archive(tmp_path / "1.tar.gz", saved_model_dir)
  assert validate_docs.validate_archive(archive) == []
  assert validate_docs.validate_archives_root(str(tmp_path)) == []


def test_archive_with_a_top_level_folder_is_refused(tmp_path, saved_model_dir):
  archive = _archive(tmp_path / "1.tar.gz", saved_model_dir, arcname="model")
  problems = validate_docs.validate_archive(archive)
  assert any("'model/saved_model.pb' is not at an allowed root path" in p for p in problems)
  assert f"{archive}:0: no saved_model.pb at the archive root" in problems


@pytest.mark.parametrize("name", ["../x", "/etc/x", "variables/../../x"])
def test_archive_with_a_member_outside_is_refused(tmp_path, saved_model_dir, name):
  archive = _archive(tmp_path / "1.tar.gz", saved_model_dir, extra=[(name, b"x")])
  assert validate_docs.validate_archive(archive) == [
      f"{archive}:0: member {name!r} points outside the archive"]


def test_archive_with_garbage_saved_model_pb_is_refused(tmp_path):
  archive = _archive(tmp_path / "1.tar.gz", None,
                     extra=[("saved_model.pb", b"not a saved model"), ("variables/x", b"")])
  problems = validate_docs.validate_archive(archive)
  assert len(problems) == 1 and "saved_model.pb does not parse" in problems[0], problems


def test_archive_with_stray_files_or_no_archive_is_refused(tmp_path, saved_model_dir):
  archive = _archive(tmp_path / "1.tar.gz", saved_model_dir,
                     extra=[("notes.txt", b"x"), ("assets/.hidden", b"x")])
  problems = validate_docs.validate_archive(archive)
  assert len(problems) == 2, problems
  not_gzip = tmp_path / "2.tar.gz"
  not_gzip.write_bytes(b"plain bytes")
  assert "not a readable .tar.gz archive" in validate_docs.validate_archive(str(not_gzip))[0]
  empty = tmp_path / "empty"
  empty.mkdir()
  assert validate_docs.validate_archives_root(str(empty)) == [
      f"{empty}:0: no .tar.gz archives found"]


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120, check=False)


def test_write_docs_cli_writes_a_valid_tree(tmp_path):
  collection_md = tmp_path / "collection.md"
  result = _run("video_swin_hub.export.write_docs", f"--output_dir={tmp_path}",
                f"--asset_base_url={ASSET_BASE_URL}", f"--write_collection_md={collection_md}")
  assert result.returncode == 0, result.stderr
  docs_root = os.path.join(str(tmp_path), docs.DOCS_DIR)
  for variant in variants.collection():
    assert os.path.isfile(docs.model_doc_path(docs_root, docs.DEFAULT_PUBLISHER, variant.name, 1))
  assert collection_md.read_text(encoding="utf-8") == kaggle_docs.repository_model_card()
  result = _run("video_swin_hub.export.validate_docs", f"--docs_root={docs_root}")
  assert result.returncode == 0 and result.stdout == "", result.stdout


def test_write_docs_cli_refuses_an_unknown_variant(tmp_path):
  result = _run("video_swin_hub.export.write_docs", f"--output_dir={tmp_path}",
                f"--asset_base_url={ASSET_BASE_URL}", f"--variants={TINY},swin_huge")
  assert result.returncode != 0
  lines = result.stderr.strip().split("\n")
  assert len(lines) == 1 and "unknown variant 'swin_huge'" in lines[0] and TINY in lines[0]
  assert not os.path.exists(os.path.join(str(tmp_path), "tfhub.dev"))


def test_cli_tools_fail_on_invalid_docs(tmp_path):
  result = _run("video_swin_hub.export.write_docs", f"--output_dir={tmp_path}",
                "--asset_base_url=https://github.com/someone/models", f"--variants={TINY}")
  assert result.returncode == 1 and "is on github.com" in result.stderr
  result = _run("video_swin_hub.export.validate_docs", f"--docs_root={os.path.join(str(tmp_path), docs.DOCS_DIR)}")
  assert result.returncode == 1
  assert result.stdout.count("\n") == 1 and "is on github.com" in result.stdout
