"""Publishing to Kaggle Models, against the local fake Kaggle API (tests/kaggle_server.py).

kagglesdk's TEST environment sends every call to localhost:7777, where the module's server runs;
HOME points at an empty temporary folder so that no credential of the machine is used.
"""

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time

import kagglehub
import keras
import numpy as np
import pytest
import requests
import tensorflow_hub as hub

import conftest
import torch_reference
from video_swin_hub.export import packaging
from video_swin_hub.export import published_models
from video_swin_hub.export.destinations import base
from video_swin_hub.export.destinations import kaggle
from video_swin_hub.hub_models import variants
import kaggle_server
from kaggle_server import KaggleServer

TINY = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
OWNER, KEY = "alice", "kaggle-key-for-tests-7f3a"
MODEL = "video-swin-transformer"
ROOT = f"kaggle://{OWNER}/{MODEL}"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_SIZE = (8, 56, 56)
# Stands in for a registered model in the destination-level tests (their files are a small
# random model: the destination does not look inside).
SMALL_MODEL = published_models.PublishedModel(TINY, input_size=SMALL_SIZE)


@pytest.fixture(scope="module")
def server():
  with KaggleServer({OWNER: KEY}) as running:
    yield running


@pytest.fixture(autouse=True)
def kaggle_env(server, tmp_path, monkeypatch):
  """A fresh server state and this test's own credentials, with nothing from the machine."""
  server.state.reset()
  home = tmp_path / "home"
  home.mkdir()
  for name in ("KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "KAGGLE_USERNAME", "KAGGLE_KEY"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
  monkeypatch.setenv("KAGGLE_USERNAME", OWNER)
  monkeypatch.setenv("KAGGLE_KEY", KEY)
  monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "tfhub_cache"))
  return server.state


def _served_url(name: str, version: int) -> str:
  return f"http://localhost:7777/models/{OWNER}/{MODEL}/tensorFlow2/{name}/{version}"


def _destination(root: str = ROOT) -> kaggle.KaggleDestination:
  return kaggle.KaggleDestination(root, sleep=lambda seconds: None)


@pytest.fixture(scope="module")
def small_savedmodel(tmp_path_factory):
  return conftest.export_small_model(str(tmp_path_factory.mktemp("small") / "savedmodel"),
                                     input_size=SMALL_SIZE)


def _built(savedmodel_dir: str, folder, version: int) -> base.BuiltVersion:
  """A BuiltVersion of SMALL_MODEL over `savedmodel_dir`, with its archive and manifest."""
  archive = str(folder / f"{version}.tar.gz")
  packaging.make_archive(savedmodel_dir, archive)
  manifest = {"model": SMALL_MODEL.name, "version": version,
              "identity": published_models.identity(SMALL_MODEL),
              "archive_sha256": "0" * 64, "checkpoint_source": "tests"}
  manifest_path = folder / f"{version}.manifest.json"
  manifest_path.write_text(json.dumps(manifest))
  return base.BuiltVersion(base.VersionId(SMALL_MODEL.name, version), savedmodel_dir, archive,
                           str(manifest_path), manifest)


def _publish_small(destination, savedmodel_dir, folder, version: int) -> str:
  version_id = base.VersionId(SMALL_MODEL.name, version)
  destination.check([version_id], overwrite=False)
  with destination.begin(version_id, overwrite=False) as transaction:
    return transaction.commit(_built(savedmodel_dir, folder, version))


def _local_files(folder) -> dict:
  files = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, folder).replace(os.sep, "/")] = f.read()
  return files


# -- destination level, on a small random model --


def test_first_publish_sets_every_field_in_the_creating_calls(kaggle_env, small_savedmodel,
                                                              tmp_path):
  handle = _publish_small(_destination(), small_savedmodel, tmp_path, 1)
  assert handle == (f"https://www.kaggle.com/models/{OWNER}/{MODEL}/tensorFlow2/"
                    f"{SMALL_MODEL.name}/1")

  (created,) = kaggle_env.calls_to("CreateModel")
  assert created["ownerSlug"] == OWNER and created["slug"] == MODEL
  assert created["title"] == "Video Swin Transformer"
  assert created["subtitle"].startswith("Video Swin Transformer video feature extractors")
  assert created["isPrivate"] is True  # private unless ?public=true
  card = created["description"]
  assert f"[1]({handle})" in card and f"`{SMALL_MODEL.name}`" in card
  assert "| 78.8 | 93.6 | 32 frames (interval 2) x 4 clips x 3 crops |" in card
  assert "`[batch, 3, 8, 56, 56]`" in card
  assert "@article{liu2021video," in card and "arXiv:2106.13230" in card
  assert "Apache 2.0" in card
  assert "tfhub.dev" not in card

  (instance,) = kaggle_env.calls_to("CreateModelInstance")
  body = instance["body"]
  assert body["instanceSlug"] == SMALL_MODEL.name
  assert body["framework"] == "MODEL_FRAMEWORK_TENSOR_FLOW_2"
  assert body["licenseName"] == "Apache 2.0"
  assert body["fineTunable"] is True
  assert body["trainingData"] == [variants.IMAGENET_1K.url, variants.KINETICS_400.url]
  assert "`video`: float32 `[batch, 3, 8, 56, 56]`" in body["overview"]
  assert "Frames: 8 frames taken at a temporal interval of 2" in body["overview"]
  usage = body["usage"]
  assert f'hub.KerasLayer("{handle}", trainable=True)' in usage
  assert (f'kagglehub.model_download("{OWNER}/{MODEL}/tensorFlow2/{SMALL_MODEL.name}/1")'
          in usage)
  assert "keras.layers.TFSMLayer(path" in usage
  assert f"python -m video_swin_hub.extraction.extract_features --model={handle}" in usage
  assert "tfhub.dev" not in usage + body["overview"]
  assert not kaggle_env.calls_to("UpdateModelInstance")  # nothing left to fix afterwards

  # What was stored is the SavedModel's files and the manifest, byte for byte.
  stored = kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name).versions
  assert [v.number for v in stored] == [1]
  expected = _local_files(small_savedmodel)
  expected["manifest.json"] = (tmp_path / "1.manifest.json").read_bytes()
  assert stored[0].files == expected


def test_private_model_loads_through_kagglehub_only(kaggle_env, small_savedmodel, tmp_path,
                                                    monkeypatch):
  _publish_small(_destination(), small_savedmodel, tmp_path, 1)
  url = _served_url(SMALL_MODEL.name, 1) + "?tf-hub-format=compressed"
  assert requests.get(url, timeout=30).status_code == 404

  # The usage text's Keras 3 snippet: kagglehub.model_download with credentials, then TFSMLayer.
  monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
  path = kagglehub.model_download(
      kaggle.kagglehub_handle(OWNER, MODEL, SMALL_MODEL.name, 1))
  downloaded = _local_files(path)
  assert {k: v for k, v in downloaded.items() if k != "manifest.json"} == _local_files(
      small_savedmodel)
  layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
  assert layer(np.zeros([1, 3, *SMALL_SIZE], np.float32))["features"].shape == (1, 192)

  _destination(ROOT + "?public=true").write_docs(base.DocsOptions("unused"), lambda line: None)
  assert requests.get(url, timeout=30).status_code == 200


def test_second_version_and_docs_list_every_version(kaggle_env, small_savedmodel, tmp_path):
  destination = _destination(ROOT + "?public=true")
  _publish_small(destination, small_savedmodel, tmp_path, 1)
  second = _publish_small(destination, small_savedmodel, tmp_path, 2)
  assert second.endswith(f"/{SMALL_MODEL.name}/2")
  assert [v.number for v in kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name).versions] == [1, 2]
  (added,) = kaggle_env.calls_to("CreateModelInstanceVersion")
  assert added["instanceSlug"] == SMALL_MODEL.name
  assert added["body"]["versionNotes"].startswith(f"{SMALL_MODEL.name}/2: archive sha256 ")
  (updated,) = kaggle_env.calls_to("UpdateModelInstance")
  assert set(updated["updateMask"].split(",")) == {
      "overview", "usage", "licenseName", "fineTunable", "trainingData"}
  assert kaggle_env.model(OWNER, MODEL).fields["isPrivate"] is False

  # A variation uploaded by other means (no manifest) is not listed, nor documented.
  foreign = kaggle_server.Instance("other", "MODEL_FRAMEWORK_TENSOR_FLOW_2", {})
  foreign.versions.append(kaggle_server.Version(1, "", {"saved_model.pb": b"..."}))
  kaggle_env.model(OWNER, MODEL).instances[("tensorflow2", "other")] = foreign
  assert [(m["model"], m["version"]) for m in destination.published()] == [
      (SMALL_MODEL.name, 1), (SMALL_MODEL.name, 2)]
  written = destination.write_docs(base.DocsOptions("unused"), lambda line: None)
  assert written == [f"https://www.kaggle.com/models/{OWNER}/{MODEL}",
                     f"https://www.kaggle.com/models/{OWNER}/{MODEL}/tensorFlow2/"
                     f"{SMALL_MODEL.name}"]
  card = kaggle_env.model(OWNER, MODEL).fields["description"]
  assert f"[2]({second})" in card
  usage = kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name).fields["usage"]
  assert f'hub.KerasLayer("{second}", trainable=True)' in usage
  served = hub.KerasLayer(_served_url(SMALL_MODEL.name, 2))
  assert served(np.zeros([1, 3, *SMALL_SIZE], np.float32)).shape == (1, 192)


def test_version_kaggle_would_not_assign_is_refused_before_upload(kaggle_env):
  expected = ("cannot get version 2: Kaggle numbers versions itself and would make it version 1 "
              "(the variation does not exist yet)")
  with pytest.raises(kaggle.KaggleError, match=re.escape(expected)):
    _destination().check([base.VersionId(SMALL_MODEL.name, 2)], overwrite=False)
  assert not kaggle_env.calls_to("StartBlobUpload") and not kaggle_env.blobs


def test_existing_and_skipped_versions_are_refused(kaggle_env, small_savedmodel, tmp_path):
  destination = _destination()
  _publish_small(destination, small_savedmodel, tmp_path, 1)
  uploads = len(kaggle_env.calls_to("StartBlobUpload"))
  for overwrite in (False, True):
    with pytest.raises(base.AlreadyPublishedError, match="/1 already exists .latest is 1.: "
                       "Kaggle versions are immutable and cannot be replaced"):
      destination.check([base.VersionId(SMALL_MODEL.name, 1)], overwrite=overwrite)
  with pytest.raises(kaggle.KaggleError, match="would make it version 2 .its latest is 1."):
    destination.begin(base.VersionId(SMALL_MODEL.name, 3), overwrite=False)
  assert len(kaggle_env.calls_to("StartBlobUpload")) == uploads
  assert [v.number for v in kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name).versions] == [1]


def test_interrupted_upload_is_resumed(kaggle_env, small_savedmodel, tmp_path):
  kaggle_env.upload_faults = 2  # the first two PUTs drop the connection after half the bytes
  _publish_small(_destination(), small_savedmodel, tmp_path, 1)
  files = _local_files(small_savedmodel)
  assert kaggle_env.upload_puts == len(files) + 1 + 2  # + manifest + the two interrupted PUTs
  stored = kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name).versions[0].files
  assert {k: v for k, v in stored.items() if k != "manifest.json"} == files


def test_upload_that_keeps_failing_leaves_no_version(kaggle_env, small_savedmodel, tmp_path):
  kaggle_env.upload_faults = 1000
  with pytest.raises(kaggle.KaggleError) as raised:
    _publish_small(_destination(), small_savedmodel, tmp_path, 1)
  message = str(raised.value)
  assert re.fullmatch(r"upload of \S+ failed after 5 attempts \(ConnectionError\); "
                      r"no version was created", message)
  assert kaggle_env.upload_puts == 5
  assert kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name) is None
  assert not kaggle_env.calls_to("CreateModelInstance")
  # The next run, with the network back, publishes the version as 1.
  kaggle_env.upload_faults = 0
  _publish_small(_destination(), small_savedmodel, tmp_path, 1)
  assert [v.number for v in kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name).versions] == [1]


def test_missing_credentials_are_one_error_before_any_call(kaggle_env, monkeypatch):
  monkeypatch.delenv("KAGGLE_USERNAME")
  monkeypatch.delenv("KAGGLE_KEY")
  with pytest.raises(kaggle.KaggleError, match="^no Kaggle credentials: set KAGGLE_USERNAME"):
    kaggle.from_url(ROOT)
  assert not kaggle_env.calls and kaggle_env.refused_calls == 0


def test_kaggle_json_is_read(kaggle_env, monkeypatch):
  monkeypatch.delenv("KAGGLE_USERNAME")
  monkeypatch.delenv("KAGGLE_KEY")
  # kagglehub resolves ~/.kaggle when it is imported; KAGGLE_CONFIG_DIR is read on each call.
  folder = os.path.join(os.environ["HOME"], "kaggle-config")
  os.makedirs(folder)
  monkeypatch.setenv("KAGGLE_CONFIG_DIR", folder)
  with open(os.path.join(folder, "kaggle.json"), "w") as f:
    json.dump({"username": OWNER, "key": KEY}, f)
  _destination().check([base.VersionId(SMALL_MODEL.name, 1)], overwrite=False)
  assert kaggle_env.refused_calls == 0 and kaggle_env.calls_to("GetModel")


def test_refused_credentials_are_one_error_before_any_work(kaggle_env, monkeypatch):
  monkeypatch.setenv("KAGGLE_KEY", "wrong-key")
  with pytest.raises(kaggle.KaggleError) as raised:
    _destination().check([base.VersionId(SMALL_MODEL.name, 1)], overwrite=False)
  assert str(raised.value) == ("Kaggle refused the credentials (reading Kaggle model "
                               f"{OWNER}/{MODEL}: HTTP 401)")
  assert kaggle_env.refused_calls == 1 and not kaggle_env.calls


def test_malformed_urls_are_refused():
  for url, problem in [("kaggle://alice", "is not kaggle://OWNER/MODEL"),
                       ("kaggle://alice/m/extra", "is not kaggle://OWNER/MODEL"),
                       ("kaggle://alice/m?public=yes", "public must be true or false"),
                       ("kaggle://alice/m?private=true", "unknown parameter 'private'")]:
    with pytest.raises(kaggle.KaggleError, match=re.escape(problem)):
      kaggle.parse_url(url)
  assert kaggle.parse_url("kaggle://alice/m") == ("alice", "m", None)
  assert kaggle.parse_url("kaggle://alice/m?public=true") == ("alice", "m", False)


# -- a full publish of Swin-T with export_all, loaded back with hub.KerasLayer --


def _run_export_all(*args, env=None):
  return subprocess.run([sys.executable, "-m", "video_swin_hub.export.export_all", *args], cwd=REPO,
                        env=env or dict(os.environ), capture_output=True, text=True, timeout=600,
                        check=False)


def test_swin_t_published_with_export_all_loads_with_hub_and_matches_torchvision(
    kaggle_env, tmp_path):
  reference = torch_reference.reference_model(TINY.architecture, TINY.num_classes, seed=9)
  torch_reference.save_official(reference, tmp_path / f"{TINY.name}.pth")
  result = _run_export_all(f"--output_dir={ROOT}?public=true", f"--variants={TINY.name}",
                           f"--checkpoint_dir={tmp_path}", "--input_size=8,56,56")
  assert result.returncode == 0, result.stderr[-3000:]
  name = f"{TINY.name}_8x56x56"
  assert f"updated https://www.kaggle.com/models/{OWNER}/{MODEL}\n" in result.stdout
  assert KEY not in result.stdout + result.stderr

  (version,) = kaggle_env.instance(OWNER, MODEL, name).versions
  manifest = json.loads(version.files["manifest.json"])
  assert manifest["identity"] == published_models.identity(
      published_models.PublishedModel(TINY, input_size=SMALL_SIZE))
  assert KEY not in json.dumps(manifest)
  assert {"saved_model.pb", "variables/variables.index"} <= set(version.files)
  card = kaggle_env.model(OWNER, MODEL).fields["description"]
  handle = f"https://www.kaggle.com/models/{OWNER}/{MODEL}/tensorFlow2/{name}/1"
  assert f"[1]({handle})" in card and "tfhub.dev" not in card

  video = np.random.RandomState(3).rand(2, 3, *SMALL_SIZE).astype(np.float32)
  features = hub.KerasLayer(_served_url(name, 1))(video).numpy()
  expected, _ = torch_reference.reference_outputs(reference, conftest.normalise(video))
  assert features.shape == (2, 768)
  assert conftest.relative_error(features, expected) < 1e-5


def test_cli_refusals_are_one_line_and_never_show_the_key(kaggle_env, tmp_path):
  checkpoint_dir = tmp_path / "checkpoints"
  checkpoint_dir.mkdir()
  (checkpoint_dir / f"{TINY.name}.pth").write_bytes(b"")  # every refusal comes before reading it
  common = [f"--output_dir={ROOT}", f"--variants={TINY.name}", f"--checkpoint_dir={checkpoint_dir}"]
  wrong_version = _run_export_all(*common, "--version=2")
  env = dict(os.environ, KAGGLE_KEY="wrong-" + KEY)
  refused = _run_export_all(*common, env=env)
  env = {k: v for k, v in os.environ.items() if k not in ("KAGGLE_USERNAME", "KAGGLE_KEY")}
  missing = _run_export_all(*common, env=env)
  for result, expected in [(wrong_version, "would make it version 1"),
                           (refused, "Kaggle refused the credentials"),
                           (missing, "no Kaggle credentials")]:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    output = result.stdout + result.stderr
    for secret in (KEY, base64.b64encode(f"{OWNER}:{KEY}".encode()).decode()):
      assert secret not in output
  assert not kaggle_env.blobs and not kaggle_env.models


# -- concurrent publishers and killed ones (the publishing core's trials, where they apply) --

# One publisher of a prepared version, as its own process (no TensorFlow: it starts quickly).
_PUBLISHER = r"""
import json, sys
from video_swin_hub.export.destinations import base, kaggle
folder, manifest_path, root = sys.argv[1:4]
with open(manifest_path) as f:
  manifest = json.load(f)
version = base.VersionId(manifest["model"], manifest["version"])
try:
  destination = kaggle.KaggleDestination(root)
  destination.check([version], overwrite=False)
  with destination.begin(version, overwrite=False) as transaction:
    print(transaction.commit(base.BuiltVersion(version, folder, "", manifest_path, manifest)))
except base.PublishError as error:
  sys.exit(f"error: {error}")
"""


def _start_publisher(built: base.BuiltVersion) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-c", _PUBLISHER, built.savedmodel_dir, built.manifest_path, ROOT],
      cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_four_concurrent_publishers_of_a_new_variation_one_wins(kaggle_env, small_savedmodel,
                                                                tmp_path):
  built = _built(small_savedmodel, tmp_path, 1)
  publishers = [_start_publisher(built) for _ in range(4)]
  results = [(p.wait(timeout=300), *p.communicate()) for p in publishers]
  winners = [r for r in results if r[0] == 0]
  assert len(winners) == 1, results
  for code, _, stderr in results:
    if code:
      lines = stderr.strip().splitlines()
      assert len(lines) == 1 and lines[0].startswith("error: "), stderr
      assert "already exists" in lines[0], lines[0]
  (version,) = kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name).versions
  assert {k: v for k, v in version.files.items() if k != "manifest.json"} == _local_files(
      small_savedmodel)


def test_four_concurrent_publishers_of_a_next_version_one_wins(kaggle_env, small_savedmodel,
                                                               tmp_path):
  _publish_small(_destination(), small_savedmodel, tmp_path, 1)
  built = _built(small_savedmodel, tmp_path, 2)
  kaggle_env.version_barrier = threading.Barrier(4)
  publishers = [_start_publisher(built) for _ in range(4)]
  results = [(p.wait(timeout=300), *p.communicate()) for p in publishers]
  assert [r[0] for r in results].count(0) == 1, results
  for code, _, stderr in results:
    if code:
      lines = stderr.strip().splitlines()
      assert len(lines) == 1 and lines[0].startswith("error: "), stderr
      assert ("already exists" in lines[0]
              or "another publisher added version 2 at the same time" in lines[0]), lines[0]
  # Kaggle numbered the losers' versions 3, 4, ... and they deleted them again.
  versions = kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name).versions
  assert [v.number for v in versions] == [1, 2]
  expected = _local_files(small_savedmodel)
  expected["manifest.json"] = (tmp_path / "2.manifest.json").read_bytes()
  assert versions[1].files == expected


def test_killed_publisher_leaves_no_version_or_the_whole_one(kaggle_env, small_savedmodel,
                                                             tmp_path):
  built = _built(small_savedmodel, tmp_path, 1)
  expected = _local_files(small_savedmodel)
  expected["manifest.json"] = (tmp_path / "1.manifest.json").read_bytes()
  start = time.monotonic()
  assert _start_publisher(built).wait(timeout=300) == 0
  duration = time.monotonic() - start
  random = np.random.RandomState(11)
  outcomes = []
  for trial in range(4):
    kaggle_env.reset()
    publisher = _start_publisher(built)
    time.sleep(random.uniform(0.3, 1.0) * duration)
    publisher.kill()
    publisher.wait()
    publisher.communicate()
    instance = kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name)
    versions = instance.versions if instance else []
    assert [v.number for v in versions] in ([], [1]), trial
    if versions:
      assert versions[0].files == expected
    outcomes.append(len(versions))
    # The rerun publishes version 1 unless the killed run already had.
    rerun = _destination()
    if not versions:
      _publish_small(rerun, small_savedmodel, tmp_path, 1)
    assert [v.number for v in kaggle_env.instance(OWNER, MODEL, SMALL_MODEL.name).versions] == [1]
  print(f"kills: {outcomes.count(0)} before the version existed, {outcomes.count(1)} after")
