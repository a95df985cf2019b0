"""Kaggle Models as a publishing destination: `kaggle://OWNER/MODEL`.

Where tfhub.dev handles resolve since 2023. One Kaggle model (e.g. `video-swin-transformer`)
holds the collection; each published model (variant x output x input size) is one of its
variations, which Kaggle's API calls instances, with framework TensorFlow2; each version holds
the SavedModel's files. Users load a version with
`hub.KerasLayer("https://www.kaggle.com/models/OWNER/MODEL/tensorFlow2/VARIATION/VERSION")` (public
models: tensorflow_hub asks for `?tf-hub-format=compressed` and sends no credentials) or with
`kagglehub.model_download("OWNER/MODEL/tensorFlow2/VARIATION/VERSION")` (also private ones).

Everything goes through kagglesdk's API client (kagglehub's own `model_upload` sets no model
card, applies the license only when it creates a variation and prints requests in kagglesdk's
TEST environment):

1. The credentials are read the way kagglehub reads them (a token in KAGGLE_API_TOKEN or
   `~/.kaggle/access_token`, preferred; else KAGGLE_USERNAME/KAGGLE_KEY; else
   `~/.kaggle/kaggle.json`, or `KAGGLE_CONFIG_DIR/kaggle.json`) and tried with one call before any
   work. They are never printed, logged or written anywhere.
2. Kaggle numbers versions itself: 1 when a variation is created, then one more per new version.
   A version is published only when it is the number Kaggle will assign next; anything else is
   refused before anything is uploaded, so no Kaggle version ever gets a number other than ours
   and an existing version is never published twice.
3. Every file is uploaded first (resumable uploads; an interrupted one is resumed from what the
   server received, with retries and backoff). The version is created only after all files are
   up, in one call, so a failed upload leaves no version behind.
4. The model's fields (title, subtitle, the model card as description, privacy) and the
   variation's (overview, usage, license, fine-tunable, training data) are sent on creation and
   brought up to date on every later publish.

`KAGGLE_API_ENVIRONMENT=TEST` sends every call to http://localhost:7777 (kagglesdk's test
environment; the tests run a fake server there).
"""

import dataclasses
import os
import time
import urllib.parse
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from google.protobuf import field_mask_pb2
import requests
from kagglehub import config as kagglehub_config
from kagglesdk import kaggle_client
from kagglesdk import kaggle_env
from kagglesdk.blobs.types import blob_api_service
from kagglesdk.datasets.types import dataset_api_service
from kagglesdk.models.types import model_api_service as api
from kagglesdk.models.types import model_enums

SCHEME = "kaggle://"
FRAMEWORK = "tensorFlow2"
_FRAMEWORK_ENUM = model_enums.ModelFramework.MODEL_FRAMEWORK_TENSOR_FLOW_2
_WEB = "https://www.kaggle.com"
_USER_AGENT = "video-swin-hub-export"
_UPLOAD_TIMEOUT_S = 600


class KaggleError(RuntimeError):
  """Publishing to Kaggle failed or was refused; the message is one line saying why."""


@dataclasses.dataclass(frozen=True)
class ModelCard:
  """The Kaggle model's own fields (one model holds the whole collection)."""
  title: str
  subtitle: str
  description: str  # markdown: the model card


@dataclasses.dataclass(frozen=True)
class VariationCard:
  """The fields of one variation (Kaggle's instance)."""
  overview: str  # markdown
  usage: str  # markdown
  license_name: str  # Kaggle's license name, e.g. "Apache 2.0"
  fine_tunable: bool
  training_data: Tuple[str, ...]  # one entry per training dataset


def is_kaggle(path: str) -> bool:
  return path.startswith(SCHEME)


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
  unknown = set(query) - {"public"}
  if unknown:
    raise KaggleError(f"{url!r}: unknown parameter {sorted(unknown)[0]!r} (only public=)")
  public = query.get("public", [None])[-1]
  if public not in (None, "true", "false"):
    raise KaggleError(f"{url!r}: public must be true or false, not {public!r}")
  return parsed.netloc, parts[0], None if public is None else public == "false"


def handle(owner: str, model: str, variation: str, version: Optional[int] = None) -> str:
  """The Kaggle handle OWNER/MODEL/tensorFlow2/VARIATION[/VERSION], as kagglehub takes it."""
  base = f"{owner}/{model}/{FRAMEWORK}/{variation}"
  return base if version is None else f"{base}/{version}"


def web_url(owner: str, model: str, variation: Optional[str] = None,
            version: Optional[int] = None) -> str:
  """The kaggle.com page of the model, a variation or a version; hub.KerasLayer takes the
  version's URL as its handle."""
  if variation is None:
    return f"{_WEB}/models/{owner}/{model}"
  return f"{_WEB}/models/{handle(owner, model, variation, version)}"


def variation_slug(name: str) -> str:
  """Kaggle's slug for a published model name (slugs use hyphens, not underscores)."""
  return name.replace("_", "-")


def _client() -> kaggle_client.KaggleClient:
  """A kagglesdk client with the user's credentials, never verbose (verbose prints headers)."""
  try:
    credentials = kagglehub_config.get_kaggle_credentials()
  except ValueError as error:  # a malformed kaggle.json
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


def _directory_tree(tokens: Dict[str, str]) -> dataset_api_service.ApiUploadDirectoryInfo:
  """The upload tree of `tokens` ({relative POSIX path: upload token}) as the API takes it."""
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


def _local_files(folder: str) -> List[str]:
  """Relative POSIX paths of the files below `folder`, sorted."""
  found = []
  for root, _, files in os.walk(folder):
    for name in files:
      found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
  return sorted(found)


class KaggleModel:
  """One Kaggle model and its variations, through kagglesdk's API.

  Args:
    owner, model: the model's owner (user or organisation) and slug.
    is_private: privacy to set (None: private when created, unchanged otherwise).
    attempts: tries per file upload; an interrupted upload resumes where the server stopped.
    backoff_s: wait before the second try; doubles after each failed try.
    sleep: how to wait (tests pass a no-op).
  """

  def __init__(self, owner: str, model: str, is_private: Optional[bool] = None,
               attempts: int = 5, backoff_s: float = 1.0,
               sleep: Callable[[float], None] = time.sleep):
    self.owner, self.model, self.is_private = owner, model, is_private
    self.attempts, self.backoff_s, self.sleep = attempts, backoff_s, sleep
    self._api = _client()
    self._exists: Optional[bool] = None

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

  def check_access(self) -> None:
    """Tries the credentials with one read of the model (a missing model is fine); raises
    KaggleError if they are refused or the server cannot be reached."""
    request = api.ApiGetModelRequest()
    request.owner_slug, request.model_slug = self.owner, self.model
    self._exists = self._call(f"reading Kaggle model {self.owner}/{self.model}",
                              self._models.get_model, request, missing_ok=True) is not None

  def latest_version(self, variation: str) -> int:
    """The newest version number of `variation`, 0 if it does not exist."""
    request = api.ApiGetModelInstanceRequest()
    request.owner_slug, request.model_slug = self.owner, self.model
    request.framework, request.instance_slug = _FRAMEWORK_ENUM, variation
    instance = self._call(f"reading variation {variation}", self._models.get_model_instance,
                          request, missing_ok=True)
    return instance.version_number if instance is not None else 0

  def check_next_version(self, variation: str, version: int) -> int:
    """Raises KaggleError unless `version` is the one Kaggle will assign next; returns the
    latest existing version (0: none)."""
    latest = self.latest_version(variation)
    where = web_url(self.owner, self.model, variation)
    if version <= latest:
      raise KaggleError(
          f"{where} version {version} already exists (latest is {latest}): Kaggle versions "
          "are immutable")
    if version != latest + 1:
      raise KaggleError(
          f"{where} cannot get version {version}: Kaggle numbers versions itself and would make "
          f"this version {latest + 1}" + (f" (latest is {latest})" if latest else
                                           " (the variation does not exist yet)"))
    return latest

  # -- writing --

  def put_model(self, card: ModelCard) -> None:
    """Creates the model with `card`, or brings an existing model's fields up to date."""
    if self._exists is None:
      self.check_access()
    if not self._exists:
      request = api.ApiCreateModelRequest()
      request.owner_slug, request.slug = self.owner, self.model
      request.title, request.subtitle = card.title, card.subtitle
      request.description = card.description
      request.is_private = True if self.is_private is None else self.is_private
      self._call(f"creating Kaggle model {self.owner}/{self.model}",
                 self._models.create_model, request)
      self._exists = True
      return
    request = api.ApiUpdateModelRequest()
    request.owner_slug, request.model_slug = self.owner, self.model
    request.title, request.subtitle = card.title, card.subtitle
    request.description = card.description
    paths = ["title", "subtitle", "description"]
    if self.is_private is not None:
      request.is_private = self.is_private
      paths.append("is_private")
    request.update_mask = field_mask_pb2.FieldMask(paths=paths)
    self._call(f"updating Kaggle model {self.owner}/{self.model}",
               self._models.update_model, request)

  def upload_folder(self, folder: str) -> Dict[str, str]:
    """Uploads every file below `folder`; returns {relative path: upload token}."""
    return {path: self._upload_file(os.path.join(folder, *path.split("/")), path)
            for path in _local_files(folder)}

  def _upload_file(self, path: str, name: str) -> str:
    """Uploads one file (StartBlobUpload, then resumable PUTs); returns its token."""
    size = os.path.getsize(path)
    request = blob_api_service.ApiStartBlobUploadRequest()
    request.type = blob_api_service.ApiBlobType.MODEL
    request.name = os.path.basename(path)
    request.content_length = size
    request.last_modified_epoch_seconds = int(os.path.getmtime(path))
    started = self._call(f"starting the upload of {name}",
                         self._api.blobs.blob_api_client.start_blob_upload, request)
    received, delay, last_problem = 0, self.backoff_s, ""
    for attempt in range(1, self.attempts + 1):
      try:
        with open(path, "rb") as f:
          f.seek(received)
          headers = {"Content-Type": "application/octet-stream"}
          if size:
            headers["Content-Range"] = f"bytes {received}-{size - 1}/{size}"
          response = requests.put(started.create_url, data=f if size else b"", headers=headers,
                                  timeout=_UPLOAD_TIMEOUT_S)
        if response.status_code in (200, 201):
          return started.token
        if response.status_code < 500 and response.status_code not in (308, 429):
          raise KaggleError(f"upload of {name} refused: HTTP {response.status_code}")
        last_problem = f"HTTP {response.status_code}"
      except requests.RequestException as error:
        last_problem = type(error).__name__
      if attempt == self.attempts:
        break
      self.sleep(delay)
      delay *= 2
      received = self._received(started.create_url, size)
    raise KaggleError(f"upload of {name} failed after {self.attempts} attempts "
                      f"({last_problem}); no version was created")

  @staticmethod
  def _received(upload_url: str, size: int) -> int:
    """How many bytes of a resumable upload the server holds (0 if it cannot say)."""
    try:
      response = requests.put(upload_url, headers={"Content-Range": f"bytes */{size}",
                                                   "Content-Length": "0"},
                              timeout=_UPLOAD_TIMEOUT_S)
    except requests.RequestException:
      return 0
    if response.status_code in (200, 201):
      return size
    if response.status_code == 308 and "Range" in response.headers:
      return int(response.headers["Range"].rsplit("-", 1)[1]) + 1
    return 0

  def create_version(self, variation: str, version: int, tokens: Dict[str, str],
                     card: VariationCard, notes: str) -> str:
    """Creates `version` of `variation` from uploaded files (the variation itself when
    `version` is 1) and sets the variation's fields; returns the version's kaggle.com URL.

    Raises KaggleError if Kaggle would number it differently (checked again, now that the files
    are up) or assigned it another number (a concurrent publisher).
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
      self._call(f"creating {where}", self._models.create_model_instance_version, request)
      self._update_variation(variation, card)
    assigned = self.latest_version(variation)
    if assigned != version:
      raise KaggleError(f"Kaggle numbered the new version of {variation} {assigned}, not "
                        f"{version}: another publisher added a version at the same time")
    return where

  def _update_variation(self, variation: str, card: VariationCard) -> None:
    request = api.ApiUpdateModelInstanceRequest()
    request.owner_slug, request.model_slug = self.owner, self.model
    request.framework, request.instance_slug = _FRAMEWORK_ENUM, variation
    request.overview, request.usage, request.license_name = (card.overview, card.usage,
                                                             card.license_name)
    request.fine_tunable, request.training_data = card.fine_tunable, list(card.training_data)
    request.update_mask = field_mask_pb2.FieldMask(
        paths=["overview", "usage", "license_name", "fine_tunable", "training_data"])
    self._call(f"updating variation {variation}", self._models.update_model_instance, request)


def upload_version(model: KaggleModel, variation: str, version: int, savedmodel_dir: str,
                   card: VariationCard, notes: str = "") -> str:
  """Publishes `savedmodel_dir` as `version` of `variation`: refuses a number Kaggle would not
  assign before anything is uploaded, uploads every file, then creates the version. Returns the
  version's kaggle.com URL (its hub.KerasLayer handle)."""
  model.check_next_version(variation, version)
  tokens = model.upload_folder(savedmodel_dir)
  return model.create_version(variation, version, tokens, card, notes)


def published(model: KaggleModel, variations: Sequence[str]) -> Dict[str, int]:
  """{variation: latest version} for the variations of `variations` that exist on Kaggle."""
  latest = {variation: model.latest_version(variation) for variation in variations}
  return {variation: number for variation, number in latest.items() if number}
