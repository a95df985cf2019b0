"""Kaggle Models as a publishing destination: `--output_dir=kaggle://OWNER/MODEL[?public=true]`.

Where tfhub.dev handles resolve since 2023. One Kaggle model (e.g. `video-swin-transformer`)
holds the collection; each published model (variant x output x input size) is one of its
variations, which Kaggle's API calls instances, with framework TensorFlow2, named as the published
model is; each version holds the SavedModel's files and `manifest.json`. Users load a version with
`hub.KerasLayer("https://www.kaggle.com/models/OWNER/MODEL/tensorFlow2/VARIATION/VERSION")` (public
models: tensorflow_hub asks for `?tf-hub-format=compressed` and sends no credentials) or with
`kagglehub.model_download("OWNER/MODEL/tensorFlow2/VARIATION/VERSION")` (also private ones).

Everything goes through kagglesdk's API client (kagglehub's `model_upload` sets no model card,
applies the license only when it creates a variation and, in kagglesdk's TEST environment, prints
every request with its Authorization header):

1. Credentials are read the way kagglehub reads them (a token in KAGGLE_API_TOKEN or
   `~/.kaggle/access_token`, preferred; else KAGGLE_USERNAME/KAGGLE_KEY; else
   `~/.kaggle/kaggle.json`, or `KAGGLE_CONFIG_DIR/kaggle.json`) when the destination is opened,
   and tried with one call in `check`, before any work. They are never printed, logged or
   written.
2. Kaggle numbers versions itself: 1 when a variation is created, then one more per new version.
   A version is published only when it is the number Kaggle will assign next (checked before the
   upload and again just before the version is created); anything else is refused before
   anything is uploaded, and an existing version is never published again (nor replaced: Kaggle
   versions are immutable).
3. Every file is uploaded first (resumable uploads: an interrupted one resumes from what the
   server holds, with retries and backoff). The version is created only after all files are up,
   in one call, so a failed upload leaves no version; uploads that no version references are never
   visible.
4. The model (title, subtitle, the model card as description, privacy: private unless
   `?public=true`) and the variation (overview, usage, license, fine-tunable, training data) get
   every field in the call that creates them; `write_docs` brings them up to date afterwards.

Kaggle offers no lock. Creating a variation is atomic there: of several publishers of a new
variation's version 1, one wins and the others fail with "already exists". For later versions
Kaggle has no conditional create: two publishers of version N that both pass the last check
(milliseconds apart) make versions N and N+1; the second sees the number Kaggle gave it,
deletes that version and ends with an error, so only N remains (a publisher killed between its
create and its delete would leave N+1 behind).

`KAGGLE_API_ENVIRONMENT=TEST` sends every call to http://localhost:7777 (kagglesdk's test
environment; the tests run a fake server there).
"""

import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from typing import Callable, Dict, List, Optional, Tuple

from google.protobuf import field_mask_pb2
import requests
from kagglehub import config as kagglehub_config
from kagglesdk import kaggle_client
from kagglesdk import kaggle_env
from kagglesdk.blobs.types import blob_api_service
from kagglesdk.datasets.types import dataset_api_service
from kagglesdk.models.types import model_api_service as api
from kagglesdk.models.types import model_enums

from .. import published_models
from . import base
from ..docs import kaggle as kaggle_docs

SCHEME = "kaggle://"
FRAMEWORK = "tensorFlow2"
MANIFEST_NAME = "manifest.json"
_FRAMEWORK_ENUM = model_enums.ModelFramework.MODEL_FRAMEWORK_TENSOR_FLOW_2
_WEB = "https://www.kaggle.com"
_USER_AGENT = "video-swin-hub-export"
_UPLOAD_TIMEOUT_S = 600


class KaggleError(base.PublishError):
  """Publishing to Kaggle failed or was refused; the message is one line saying why."""


def parse_url(url: str) -> Tuple[str, str, Optional[bool]]:
  """(owner, model, is_private) of `kaggle://OWNER/MODEL[?public=true|false]`.

  is_private is None when the URL does not say: a new model is then private (as Kaggle makes
  it) and an existing one keeps its setting.
  """
  parsed = urllib.parse.urlparse(url)
  parts = [p for p in parsed.path.split("/") if p]
  if parsed.scheme != SCHEME[:-3] or not parsed.netloc or len(parts) != 1:
    raise KaggleError(f"{url!r} is not kaggle://OWNER/MODEL")
  query = urllib.parse.parse_qs(parsed.query)
  unknown = sorted(set(query) - {"public"})
  if unknown:
    raise KaggleError(f"{url!r}: unknown parameter {unknown[0]!r} (only public=true|false)")
  public = query.get("public", [None])[-1]
  if public not in (None, "true", "false"):
    raise KaggleError(f"{url!r}: public must be true or false, not {public!r}")
  return parsed.netloc, parts[0], None if public is None else public == "false"


def kagglehub_handle(owner: str, model: str, variation: str,
                     version: Optional[int] = None) -> str:
  """OWNER/MODEL/tensorFlow2/VARIATION[/VERSION], as kagglehub.model_download takes it."""
  base_handle = f"{owner}/{model}/{FRAMEWORK}/{variation}"
  return base_handle if version is None else f"{base_handle}/{version}"


def _version_in_url(url: str) -> Optional[int]:
  """The version number a created version's URL ends with, or None if it ends otherwise."""
  match = re.search(r"/(\d+)/?$", url or "")
  return int(match.group(1)) if match else None


def web_url(owner: str, model: str, variation: Optional[str] = None,
            version: Optional[int] = None) -> str:
  """The kaggle.com page of the model, a variation or a version; hub.KerasLayer takes a
  version's URL as its handle."""
  if variation is None:
    return f"{_WEB}/models/{owner}/{model}"
  return f"{_WEB}/models/{kagglehub_handle(owner, model, variation, version)}"


def _client() -> kaggle_client.KaggleClient:
  """A kagglesdk client with the user's credentials, never verbose (verbose prints headers)."""
  try:
    credentials = kagglehub_config.get_kaggle_credentials()
  except ValueError as error:  # a malformed kaggle.json; the message names the file only
    raise KaggleError(f"Kaggle credentials unreadable: {error}") from None
  if credentials is None:
    raise KaggleError(
        "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, write ~/.kaggle/kaggle.json "
        "or set KAGGLE_API_TOKEN (https://www.kaggle.com/settings/api)")
  return kaggle_client.KaggleClient(
      env=kaggle_env.get_env(), verbose=False, username=credentials.username,
      password=credentials.key, api_token=credentials.api_key, user_agent=_USER_AGENT)


def _status(error: requests.HTTPError) -> Optional[int]:
  return error.response.status_code if error.response is not None else None


def _local_files(folder: str) -> List[str]:
  """Relative POSIX paths of the files below `folder`, sorted."""
  found = []
  for root, _, files in os.walk(folder):
    for name in files:
      found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
  return sorted(found)


def _directory_tree(tokens: Dict[str, str]) -> dataset_api_service.ApiUploadDirectoryInfo:
  """The upload tree of `tokens` ({relative POSIX path: upload token}) as the API takes it: the
  root's files and directories, each directory with its own."""
  root = dataset_api_service.ApiUploadDirectoryInfo()
  for path, token in sorted(tokens.items()):
    *folders, _ = path.split("/")
    node = root
    for folder in folders:
      child = next((d for d in node.directories if d.name == folder), None)
      if child is None:
        child = dataset_api_service.ApiUploadDirectoryInfo()
        child.name = folder
        node.directories = node.directories + [child]
      node = child
    entry = dataset_api_service.ApiDatasetNewFile()
    entry.token = token
    node.files = node.files + [entry]
  return root


class KaggleModel:
  """One Kaggle model and its TensorFlow2 variations, through kagglesdk's API.

  Args:
    owner, model: the model's owner (user or organisation) and slug.
    is_private: privacy to set (None: private when created, unchanged otherwise).
    attempts: tries per file upload; an interrupted upload resumes where the server stopped.
    backoff_s: wait before the second try; doubles after each failed try.
    sleep: how to wait (tests pass a no-op).

  Raises:
    KaggleError: no readable credentials.
  """

  def __init__(self, owner: str, model: str, is_private: Optional[bool] = None,
               attempts: int = 5, backoff_s: float = 1.0,
               sleep: Callable[[float], None] = time.sleep):
    self.owner, self.model, self.is_private = owner, model, is_private
    self.attempts, self.backoff_s, self.sleep = attempts, backoff_s, sleep
    self._api = _client()

  @property
  def _models(self):
    return self._api.models.model_api_client

  def _call(self, what: str, fn, request, missing_ok: bool = False):
    """One API call; returns its response, or None for HTTP 404 when `missing_ok`.

    Refused credentials, unreachable servers, HTTP errors and errors reported inside an HTTP 200
    answer (Kaggle's way for creates and updates) become one-line KaggleErrors naming `what`.
    """
    try:
      response = fn(request)
    except requests.HTTPError as error:
      status = _status(error)
      if status == 404 and missing_ok:
        return None
      if status == 401:
        raise KaggleError(f"Kaggle refused the credentials ({what}: HTTP 401)") from None
      raise KaggleError(f"{what} failed: HTTP {status}: {error}") from None
    except requests.RequestException as error:
      endpoint = kaggle_env.get_endpoint(kaggle_env.get_env())
      raise KaggleError(f"{what} failed: cannot reach {endpoint} ({type(error).__name__})"
                        ) from None
    if getattr(response, "error", ""):
      raise KaggleError(f"{what} failed: {response.error}")
    return response

  # -- reading --

  def get(self) -> Optional[api.ApiModel]:
    """The model with its variations, or None if it does not exist. The first call of a run:
    refused credentials end here."""
    request = api.ApiGetModelRequest()
    request.owner_slug, request.model_slug = self.owner, self.model
    return self._call(f"reading Kaggle model {self.owner}/{self.model}", self._models.get_model,
                      request, missing_ok=True)

  def latest_version(self, variation: str) -> int:
    """The newest version number of `variation`, 0 if it does not exist."""
    request = api.ApiGetModelInstanceRequest()
    request.owner_slug, request.model_slug = self.owner, self.model
    request.framework, request.instance_slug = _FRAMEWORK_ENUM, variation
    instance = self._call(f"reading variation {variation}", self._models.get_model_instance,
                          request, missing_ok=True)
    return instance.version_number if instance is not None else 0

  def check_next_version(self, variation: str, version: int) -> None:
    """Raises unless `version` is the number Kaggle will give the next version of `variation`.

    Raises:
      AlreadyPublishedError: the version exists (Kaggle versions are immutable).
      KaggleError: Kaggle would number it differently.
    """
    latest = self.latest_version(variation)
    where = web_url(self.owner, self.model, variation)
    if version <= latest:
      raise base.AlreadyPublishedError(
          f"{where}/{version} already exists (latest is {latest}): Kaggle versions are "
          "immutable and cannot be replaced")
    if version != latest + 1:
      state = f"its latest is {latest}" if latest else "the variation does not exist yet"
      raise KaggleError(
          f"{where} cannot get version {version}: Kaggle numbers versions itself and would make "
          f"it version {latest + 1} ({state})")

  def file(self, variation: str, version: int, path: str) -> Optional[bytes]:
    """One file of a version, or None if the version has no such file."""
    request = api.ApiDownloadModelInstanceVersionRequest()
    request.owner_slug, request.model_slug = self.owner, self.model
    request.framework, request.instance_slug = _FRAMEWORK_ENUM, variation
    request.version_number, request.path = version, path
    response = self._call(f"reading {path} of {variation}/{version}",
                          self._models.download_model_instance_version, request,
                          missing_ok=True)
    return response.content if response is not None else None

  # -- writing --

  def create(self, card: kaggle_docs.ModelCard) -> None:
    """Creates the model with every field of `card` (private unless is_private is False)."""
    request = api.ApiCreateModelRequest()
    request.owner_slug, request.slug = self.owner, self.model
    request.title, request.subtitle, request.description = (card.title, card.subtitle,
                                                            card.description)
    request.is_private = self.is_private is not False
    self._call(f"creating Kaggle model {self.owner}/{self.model}", self._models.create_model,
               request)

  def update(self, card: kaggle_docs.ModelCard) -> None:
    """Sets the model's title, subtitle and card, and its privacy if one was asked for."""
    request = api.ApiUpdateModelRequest()
    request.owner_slug, request.model_slug = self.owner, self.model
    request.title, request.subtitle, request.description = (card.title, card.subtitle,
                                                            card.description)
    paths = ["title", "subtitle", "description"]
    if self.is_private is not None:
      request.is_private = self.is_private
      paths.append("is_private")
    request.update_mask = field_mask_pb2.FieldMask(paths=paths)
    self._call(f"updating Kaggle model {self.owner}/{self.model}", self._models.update_model,
               request)

  def upload(self, files: Dict[str, str]) -> Dict[str, str]:
    """Uploads {relative POSIX path: local file}; returns {relative path: upload token}."""
    return {path: self._upload_file(local, path) for path, local in sorted(files.items())}

  def _upload_file(self, local: str, name: str) -> str:
    """Uploads one file (StartBlobUpload, then resumable PUTs); returns its token."""
    size = os.path.getsize(local)
    request = blob_api_service.ApiStartBlobUploadRequest()
    request.type = blob_api_service.ApiBlobType.MODEL
    request.name = name.rsplit("/", 1)[-1]
    request.content_length = size
    request.last_modified_epoch_seconds = int(os.path.getmtime(local))
    started = self._call(f"starting the upload of {name}",
                         self._api.blobs.blob_api_client.start_blob_upload, request)
    received, delay, problem = 0, self.backoff_s, ""
    for attempt in range(1, self.attempts + 1):
      try:
        with open(local, "rb") as f:
          f.seek(received)
          headers = {"Content-Type": "application/octet-stream"}
          if size:
            headers["Content-Range"] = f"bytes {received}-{size - 1}/{size}"
          response = requests.put(started.create_url, data=f if size else b"", headers=headers,
                                  timeout=_UPLOAD_TIMEOUT_S)
        if response.status_code in (200, 201):
          return started.token
        if response.status_code < 500 and response.status_code not in (308, 429):
          raise KaggleError(f"upload of {name} refused: HTTP {response.status_code}; no version "
                            "was created")
        problem = f"HTTP {response.status_code}"
      except requests.RequestException as error:
        problem = type(error).__name__
      if attempt < self.attempts:
        self.sleep(delay)
        delay *= 2
        received = self._received(started.create_url, size)
    raise KaggleError(f"upload of {name} failed after {self.attempts} attempts ({problem}); no "
                      "version was created")

  @staticmethod
  def _received(upload_url: str, size: int) -> int:
    """How many bytes of a resumable upload the server holds (0 if it cannot say)."""
    try:
      response = requests.put(upload_url, headers={"Content-Range": f"bytes */{size}"},
                              data=b"", timeout=_UPLOAD_TIMEOUT_S)
    except requests.RequestException:
      return 0
    if response.status_code in (200, 201):
      return size
    if response.status_code == 308 and "Range" in response.headers:
      return int(response.headers["Range"].rsplit("-", 1)[1]) + 1
    return 0

  def create_version(self, variation: str, version: int, tokens: Dict[str, str],
                     card: kaggle_docs.VariationCard, notes: str) -> None:
    """Creates `version` of `variation` from uploaded files: version 1 creates the variation
    with every field of `card`; later versions are added with `notes` and the variation's fields
    are then set from `card`.

    Raises:
      KaggleError: Kaggle would number it differently (checked again, now that the files are
        up), refused it, or numbered it differently (a concurrent publisher).
    """
    self.check_next_version(variation, version)
    tree = _directory_tree(tokens)
    where = web_url(self.owner, self.model, variation, version)
    if version == 1:
      request = api.ApiCreateModelInstanceRequest()
      request.owner_slug, request.model_slug = self.owner, self.model
      body = api.ApiCreateModelInstanceRequestBody()
      body.instance_slug, body.framework = variation, _FRAMEWORK_ENUM
      body.overview, body.usage, body.license_name = card.overview, card.usage, card.license_name
      body.fine_tunable, body.training_data = card.fine_tunable, list(card.training_data)
      body.files, body.directories = tree.files, tree.directories
      request.body = body
      self._call(f"creating {where}", self._models.create_model_instance, request)
    else:
      request = api.ApiCreateModelInstanceVersionRequest()
      request.owner_slug, request.model_slug = self.owner, self.model
      request.framework, request.instance_slug = _FRAMEWORK_ENUM, variation
      body = api.ApiCreateModelInstanceVersionRequestBody()
      body.version_notes = notes
      body.files, body.directories = tree.files, tree.directories
      request.body = body
      created = self._call(f"creating {where}", self._models.create_model_instance_version,
                           request)
      # Kaggle has no conditional create: of two publishers that both passed the check above,
      # the second gets the next number. It takes its version back, so that exactly one version
      # carries the number both asked for.
      ours = _version_in_url(created.url) or self.latest_version(variation)
      if ours != version:
        self.delete_version(variation, ours)
        raise KaggleError(f"Kaggle numbered the new version of {variation} {ours}, not "
                          f"{version}: another publisher added version {version} at the same "
                          f"time; version {ours} was deleted again")
      self.update_variation(variation, card)
      return
    assigned = self.latest_version(variation)
    if assigned != version:
      raise KaggleError(f"Kaggle numbered the new version of {variation} {assigned}, not "
                        f"{version}: another publisher added a version at the same time")

  def delete_version(self, variation: str, version: int) -> None:
    """Deletes `version` of `variation`."""
    request = api.ApiDeleteModelInstanceVersionRequest()
    request.owner_slug, request.model_slug = self.owner, self.model
    request.framework, request.instance_slug = _FRAMEWORK_ENUM, variation
    request.version_number = version
    self._call(f"deleting {web_url(self.owner, self.model, variation, version)}",
               self._models.delete_model_instance_version, request)

  def update_variation(self, variation: str, card: kaggle_docs.VariationCard) -> None:
    """Sets every field of `card` on an existing variation."""
    request = api.ApiUpdateModelInstanceRequest()
    request.owner_slug, request.model_slug = self.owner, self.model
    request.framework, request.instance_slug = _FRAMEWORK_ENUM, variation
    request.overview, request.usage, request.license_name = (card.overview, card.usage,
                                                             card.license_name)
    request.fine_tunable, request.training_data = card.fine_tunable, list(card.training_data)
    request.update_mask = field_mask_pb2.FieldMask(
        paths=["overview", "usage", "license_name", "fine_tunable", "training_data"])
    self._call(f"updating variation {variation}", self._models.update_model_instance, request)


class KaggleTransaction(base.Transaction):
  """One version on its way to Kaggle: built in a local `work_dir`, published by `commit`."""

  def __init__(self, destination: "KaggleDestination", version: base.VersionId):
    self._destination = destination
    self._version = version
    self.work_dir = tempfile.mkdtemp(prefix=f"kaggle-{version.name}-{version.version}-")

  def commit(self, built: base.BuiltVersion) -> str:
    destination, version = self._destination, self._version
    entry = destination.entry(built.manifest)
    kaggle = destination.kaggle
    if kaggle.get() is None:
      kaggle.create(kaggle_docs.model_card([entry], destination.model_url))
    kaggle.check_next_version(version.name, version.version)
    files = {path: os.path.join(built.savedmodel_dir, *path.split("/"))
             for path in _local_files(built.savedmodel_dir)}
    files[MANIFEST_NAME] = built.manifest_path
    tokens = kaggle.upload(files)
    notes = (f"{version}: archive sha256 {built.manifest.get('archive_sha256')}, checkpoint "
             f"{built.manifest.get('checkpoint_source')}")
    kaggle.create_version(version.name, version.version, tokens,
                          kaggle_docs.variation_card(entry), notes)
    return entry.url

  def abort(self) -> None:
    shutil.rmtree(self.work_dir, ignore_errors=True)


class KaggleDestination(base.Destination):
  """Publishes versions as variations of one Kaggle model (see the module docstring)."""

  def __init__(self, root: str, attempts: int = 5, backoff_s: float = 1.0,
               sleep: Callable[[float], None] = time.sleep):
    owner, model, is_private = parse_url(root)
    self.root = root
    self.kaggle = KaggleModel(owner, model, is_private, attempts, backoff_s, sleep)
    self.model_url = web_url(owner, model)

  def entry(self, manifest: base.Manifest) -> kaggle_docs.PublishedVersion:
    """What the docs say about the version a manifest describes, with its Kaggle handles."""
    name, version = manifest["model"], int(manifest["version"])
    return kaggle_docs.PublishedVersion(
        published_models.from_identity(manifest["identity"]), version,
        web_url(self.kaggle.owner, self.kaggle.model, name, version),
        kagglehub_handle(self.kaggle.owner, self.kaggle.model, name, version))

  def check(self, versions, overwrite: bool) -> None:
    del overwrite  # Kaggle versions cannot be replaced: an existing one is always refused.
    self.kaggle.get()
    for version in versions:
      self.kaggle.check_next_version(version.name, version.version)

  def begin(self, version: base.VersionId, overwrite: bool) -> KaggleTransaction:
    del overwrite
    self.kaggle.check_next_version(version.name, version.version)
    return KaggleTransaction(self, version)

  def published(self) -> List[base.Manifest]:
    model = self.kaggle.get()
    if model is None:
      return []
    manifests = []
    for instance in model.instances:
      if instance.framework != _FRAMEWORK_ENUM:
        continue
      for number in range(1, instance.version_number + 1):
        # Versions without our manifest were not published by these tools: not listed.
        manifest = self.kaggle.file(instance.slug, number, MANIFEST_NAME)
        if manifest is not None:
          manifests.append(json.loads(manifest))
    return sorted(manifests, key=lambda m: (m["model"], int(m["version"])))

  def handle(self, version: base.VersionId) -> str:
    return web_url(self.kaggle.owner, self.kaggle.model, version.name, version.version)

  def write_docs(self, options: base.DocsOptions, progress: base.Progress) -> List[str]:
    """Sets the model card from every published version and each variation's overview and
    usage from its latest version; returns the kaggle.com pages it updated."""
    del options  # Kaggle pages name Kaggle handles; there is no publisher id or archive URL.
    entries = [self.entry(manifest) for manifest in self.published()]
    if not entries:
      return []
    self.kaggle.update(kaggle_docs.model_card(entries, self.model_url))
    written = [self.model_url]
    latest = {entry.model.name: entry for entry in entries}  # sorted: the last is the newest
    for name, entry in latest.items():
      self.kaggle.update_variation(name, kaggle_docs.variation_card(entry))
      written.append(web_url(self.kaggle.owner, self.kaggle.model, name))
    for page in written:
      progress(f"updated {page}")
    return written

  def remove_stale_staging(self, progress: base.Progress) -> List[str]:
    """Nothing to remove: Kaggle has no staging area; uploaded files that no version references
    are never visible."""
    del progress
    return []


def from_url(output_dir: str, options=None) -> KaggleDestination:
  """The destination for `kaggle://OWNER/MODEL[?public=true|false]` (the factory's entry point)."""
  del options  # Kaggle takes no destination options; privacy is part of the URL.
  return KaggleDestination(output_dir)
