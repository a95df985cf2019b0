"""A local stand-in for the part of Kaggle's API that publishing to Kaggle Models uses.

Derived from kagglesdk 0.1.38's request and response types (`kagglesdk/models/types/
model_api_service.py`, `kagglesdk/blobs/types/blob_api_service.py`) and its HTTP client: every
call is `POST /api/v1/<service>/<method>` with a JSON body in camelCase, enums by name, fields at
their default value left out. Errors are JSON `{"code": N, "message": ...}`; "already exists" on a
create is `errorCode: 409` inside an HTTP 200 answer, as kagglehub relies on. Blob uploads follow
the resumable protocol kagglehub speaks: StartBlobUpload returns a token and an upload URL, then
`PUT` with `Content-Range: bytes A-B/TOTAL` (308 + `Range` while incomplete, 200 when complete),
and `PUT` with `Content-Range: bytes */TOTAL` asks how much arrived.

Each stored version is served the way Kaggle serves TF Hub handles:
`GET /models/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION?tf-hub-format=compressed` answers a .tar.gz
with the version's files at its root (public models only: tensorflow_hub sends no credentials).

kagglesdk's TEST environment (`KAGGLE_API_ENVIRONMENT=TEST`) always talks to localhost:7777, so
the server binds that port; tests using it must not run in parallel with each other.
"""

import base64
import dataclasses
import http.server
import io
import itertools
import json
import re
import tarfile
import threading
import urllib.parse
from typing import Dict, List, Optional, Tuple

PORT = 7777
# Answers file bytes rather than JSON, so the handler serves it itself.
_DOWNLOAD_METHOD = "models.ModelApiService/DownloadModelInstanceVersion"
_FRAMEWORK_PREFIX = "MODEL_FRAMEWORK_"


def framework_key(name: str) -> str:
  """Kaggle's framework matching: case and underscores ignored, with or without the enum prefix
  (`MODEL_FRAMEWORK_TENSOR_FLOW_2`, `TensorFlow2` and `tensorFlow2` are one framework)."""
  name = name.upper()
  if name.startswith(_FRAMEWORK_PREFIX):
    name = name[len(_FRAMEWORK_PREFIX):]
  return name.replace("_", "").lower()


@dataclasses.dataclass
class Blob:
  """One resumable upload: what was declared and what has arrived so far."""
  name: str
  content_length: int
  data: bytearray = dataclasses.field(default_factory=bytearray)

  @property
  def complete(self) -> bool:
    return len(self.data) == self.content_length


@dataclasses.dataclass
class Version:
  number: int
  notes: str
  files: Dict[str, bytes]  # path relative to the version root -> content


@dataclasses.dataclass
class Instance:
  """A variation (Kaggle's "instance") with its metadata fields as last set."""
  slug: str
  framework: str
  fields: Dict[str, object]
  versions: List[Version] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Model:
  owner: str
  slug: str
  fields: Dict[str, object]
  instances: Dict[Tuple[str, str], Instance] = dataclasses.field(default_factory=dict)


MODEL_FIELDS = ("title", "subtitle", "isPrivate", "description", "provenanceSources")
INSTANCE_FIELDS = ("overview", "usage", "fineTunable", "trainingData", "licenseName")
# What proto3 JSON leaves out when a field has its default value.
_DEFAULTS = {"isPrivate": False, "fineTunable": False, "trainingData": [], "subtitle": "",
             "description": "", "overview": "", "usage": "", "licenseName": "",
             "provenanceSources": "", "title": ""}


class ApiError(Exception):
  def __init__(self, code: int, message: str):
    super().__init__(message)
    self.code = code


class KaggleState:
  """Everything the server received and keeps, guarded by one lock."""

  def __init__(self, credentials: Dict[str, str]):
    self.lock = threading.Lock()
    self.credentials = dict(credentials)
    self.models: Dict[Tuple[str, str], Model] = {}
    self.blobs: Dict[str, Blob] = {}
    # (method, JSON body) of every authenticated API call, in order.
    self.calls: List[Tuple[str, dict]] = []
    self.refused_calls = 0
    # While > 0, each upload PUT with data stores half of it and then drops the connection.
    self.upload_faults = 0
    self.upload_puts = 0
    # When set, each CreateModelInstanceVersion call waits here first: several publishers that
    # all passed their "next version" check then create at once, as in the worst real race.
    self.version_barrier: Optional[threading.Barrier] = None
    self._ids = itertools.count(1)

  def reset(self) -> None:
    with self.lock:
      self.models.clear()
      self.blobs.clear()
      self.calls.clear()
      self.refused_calls = 0
      self.upload_faults = 0
      self.upload_puts = 0
      self.version_barrier = None

  def calls_to(self, method: str) -> List[dict]:
    with self.lock:
      return [body for name, body in self.calls if name == method]

  def model(self, owner: str, slug: str) -> Optional[Model]:
    with self.lock:
      return self.models.get((owner, slug))

  def instance(self, owner: str, model: str, variation: str,
               framework: str = "tensorFlow2") -> Optional[Instance]:
    found = self.model(owner, model)
    return found.instances.get((framework_key(framework), variation)) if found else None

  # -- API methods: each takes the request body and returns the response body. --

  def _model_or_404(self, owner: str, slug: str) -> Model:
    model = self.models.get((owner, slug))
    if model is None:
      raise ApiError(404, f"model {owner}/{slug} not found")
    return model

  def _instance_or_404(self, body: dict) -> Instance:
    model = self._model_or_404(body.get("ownerSlug", ""), body.get("modelSlug", ""))
    key = (framework_key(body.get("framework", "")), body.get("instanceSlug", ""))
    if key not in model.instances:
      raise ApiError(404, f"instance {key[1]} ({key[0]}) not found")
    return model.instances[key]

  def _model_json(self, model: Model) -> dict:
    return {"id": 1, "ref": f"{model.owner}/{model.slug}", "slug": model.slug,
            "author": model.owner, **model.fields,
            "instances": [self._instance_json(model, i) for i in model.instances.values()]}

  @staticmethod
  def _instance_json(model: Model, instance: Instance) -> dict:
    latest = instance.versions[-1].number if instance.versions else 0
    return {"id": 1, "slug": instance.slug, "framework": instance.framework,
            "versionNumber": latest, **instance.fields,
            "url": f"/models/{model.owner}/{model.slug}/{instance.framework}/{instance.slug}"}

  def _files(self, body: dict) -> Dict[str, bytes]:
    """The uploaded files named by `files` and `directories` (ApiUploadDirectoryInfo trees)."""
    files: Dict[str, bytes] = {}

    def add(entries: List[dict], prefix: str) -> None:
      for entry in entries:
        blob = self.blobs.get(entry.get("token", ""))
        if blob is None or not blob.complete:
          raise ApiError(400, f"upload token {entry.get('token')!r} is unknown or incomplete")
        files[prefix + blob.name] = bytes(blob.data)

    def walk(directories: List[dict], prefix: str) -> None:
      for directory in directories:
        path = f"{prefix}{directory['name']}/"
        add(directory.get("files", []), path)
        walk(directory.get("directories", []), path)

    add(body.get("files", []), "")
    walk(body.get("directories", []), "")
    if not files:
      raise ApiError(400, "a version needs at least one file")
    return files

  def hello(self, user: str, body: dict) -> dict:
    del body
    return {"userName": user}

  def start_blob_upload(self, user: str, body: dict) -> dict:
    del user
    if body.get("type") != "MODEL":
      raise ApiError(400, f"unexpected blob type {body.get('type')!r}")
    token = f"blob-{next(self._ids)}"
    self.blobs[token] = Blob(body.get("name", ""), int(body.get("contentLength", 0)))
    return {"token": token, "createUrl": f"http://localhost:{PORT}/upload/{token}"}

  def get_model(self, user: str, body: dict) -> dict:
    del user
    return self._model_json(self._model_or_404(body.get("ownerSlug", ""),
                                               body.get("modelSlug", "")))

  def create_model(self, user: str, body: dict) -> dict:
    owner, slug = body.get("ownerSlug", ""), body.get("slug", "")
    if owner != user:
      raise ApiError(403, f"{user} cannot create models for {owner}")
    if (owner, slug) in self.models:
      return {"error": f"model {owner}/{slug} already exists", "errorCode": 409}
    self.models[(owner, slug)] = Model(
        owner, slug, {k: body.get(k, _DEFAULTS[k]) for k in MODEL_FIELDS})
    return {"id": 1, "ref": f"{owner}/{slug}", "url": f"/models/{owner}/{slug}"}

  def update_model(self, user: str, body: dict) -> dict:
    del user
    model = self._model_or_404(body.get("ownerSlug", ""), body.get("modelSlug", ""))
    for path in _mask(body):
      if path not in MODEL_FIELDS:
        raise ApiError(400, f"unknown update mask path {path!r}")
      model.fields[path] = body.get(path, _DEFAULTS[path])
    return {"id": 1, "ref": f"{model.owner}/{model.slug}"}

  def get_model_instance(self, user: str, body: dict) -> dict:
    del user
    model = self._model_or_404(body.get("ownerSlug", ""), body.get("modelSlug", ""))
    return self._instance_json(model, self._instance_or_404(body))

  def create_model_instance(self, user: str, body: dict) -> dict:
    del user
    model = self._model_or_404(body.get("ownerSlug", ""), body.get("modelSlug", ""))
    inner = body.get("body", {})
    framework, slug = inner.get("framework", ""), inner.get("instanceSlug", "")
    if framework_key(framework) in ("", "unspecified"):
      raise ApiError(400, "framework is required")
    key = (framework_key(framework), slug)
    if key in model.instances:
      return {"error": f"instance {slug} already exists", "errorCode": 409}
    files = self._files(inner)
    instance = Instance(slug, framework,
                        {k: inner.get(k, _DEFAULTS[k]) for k in INSTANCE_FIELDS})
    instance.versions.append(Version(1, "", files))
    model.instances[key] = instance
    return {"id": 1, "ref": f"{model.owner}/{model.slug}/{framework}/{slug}",
            "url": f"/models/{model.owner}/{model.slug}/{framework}/{slug}/1"}

  def create_model_instance_version(self, user: str, body: dict) -> dict:
    del user
    instance = self._instance_or_404(body)
    inner = body.get("body", {})
    number = instance.versions[-1].number + 1
    instance.versions.append(Version(number, inner.get("versionNotes", ""), self._files(inner)))
    return {"id": 1, "ref": f"{body['ownerSlug']}/{body['modelSlug']}",
            "url": f"/models/{body['ownerSlug']}/{body['modelSlug']}/{instance.framework}/"
                   f"{instance.slug}/{number}"}

  def delete_model_instance_version(self, user: str, body: dict) -> dict:
    del user
    instance = self._instance_or_404(body)
    version = self._version_or_404(body)
    instance.versions.remove(version)
    return {}

  def update_model_instance(self, user: str, body: dict) -> dict:
    del user
    instance = self._instance_or_404(body)
    for path in _mask(body):
      if path not in INSTANCE_FIELDS:
        raise ApiError(400, f"unknown update mask path {path!r}")
      instance.fields[path] = body.get(path, _DEFAULTS[path])
    return {"id": 1}

  def list_model_instance_version_files(self, user: str, body: dict) -> dict:
    del user
    version = self._version_or_404(body)
    return {"files": [{"name": name, "size": len(data)}
                      for name, data in sorted(version.files.items())]}

  def _version_or_404(self, body: dict) -> Version:
    instance = self._instance_or_404(body)
    for version in instance.versions:
      if version.number == int(body.get("versionNumber", 0)):
        return version
    raise ApiError(404, f"version {body.get('versionNumber')} not found")

  METHODS = {
      "api.v1.DiagnosticsService/Hello": hello,
      "blobs.BlobApiService/StartBlobUpload": start_blob_upload,
      "models.ModelApiService/GetModel": get_model,
      "models.ModelApiService/CreateModel": create_model,
      "models.ModelApiService/UpdateModel": update_model,
      "models.ModelApiService/GetModelInstance": get_model_instance,
      "models.ModelApiService/CreateModelInstance": create_model_instance,
      "models.ModelApiService/CreateModelInstanceVersion": create_model_instance_version,
      "models.ModelApiService/UpdateModelInstance": update_model_instance,
      "models.ModelApiService/DeleteModelInstanceVersion": delete_model_instance_version,
      "models.ModelApiService/ListModelInstanceVersionFiles": list_model_instance_version_files,
  }

  def served_archive(self, owner: str, slug: str, framework: str, variation: str,
                     number: int) -> Optional[bytes]:
    """The .tar.gz a public version is served as (files at the root), or None."""
    with self.lock:
      model = self.models.get((owner, slug))
      if model is None or model.fields["isPrivate"]:
        return None
      instance = model.instances.get((framework_key(framework), variation))
      versions = instance.versions if instance else []
      version = next((v for v in versions if v.number == number), None)
      if version is None:
        return None
      buffer = io.BytesIO()
      # Folders are members too: tensorflow_hub's extractor creates only the folders listed.
      folders = sorted({"/".join(name.split("/")[:i]) for name in version.files
                        for i in range(1, name.count("/") + 1)})
      with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in folders:
          info = tarfile.TarInfo(name)
          info.type, info.mode = tarfile.DIRTYPE, 0o755
          archive.addfile(info)
        for name, data in sorted(version.files.items()):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          archive.addfile(info, io.BytesIO(data))
      return buffer.getvalue()

  def version_file(self, body: dict) -> bytes:
    """One file of a version (DownloadModelInstanceVersion with a path), for kagglehub."""
    with self.lock:
      version = self._version_or_404(body)
      if body.get("path") not in version.files:
        raise ApiError(404, f"file {body.get('path')!r} not found")
      return version.files[body["path"]]


def _mask(body: dict) -> List[str]:
  """The camelCase paths of an update's FieldMask (kagglesdk sends them comma-separated)."""
  return [path for path in body.get("updateMask", "").split(",") if path]


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  state: KaggleState  # set on the subclass made by KaggleServer

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args

  def _send(self, status: int, body: bytes, content_type: str = "application/json",
            headers: Optional[Dict[str, str]] = None) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.end_headers()
    self.wfile.write(body)

  def _json(self, status: int, payload: dict) -> None:
    self._send(status, json.dumps(payload).encode())

  def _body(self) -> bytes:
    return self.rfile.read(int(self.headers.get("Content-Length", 0)))

  def _user(self) -> Optional[str]:
    """The user the Authorization header proves, or None (missing or wrong credentials)."""
    auth = self.headers.get("Authorization", "")
    if auth.startswith("Basic "):
      try:
        user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
      except ValueError:
        return None
      return user if self.state.credentials.get(user) == key else None
    return None

  def do_POST(self):  # pylint: disable=invalid-name
    body = self._body()
    match = re.fullmatch(r"/api/v1/(.+/\w+)", urllib.parse.urlparse(self.path).path)
    user = self._user()
    if user is None:
      with self.state.lock:
        self.state.refused_calls += 1
      self._json(401, {"code": 401, "message": "Unauthenticated"})
      return
    if match is None or (match.group(1) not in KaggleState.METHODS
                         and match.group(1) != _DOWNLOAD_METHOD):
      self._json(404, {"code": 404, "message": f"no method {self.path}"})
      return
    request = json.loads(body or b"{}")
    method = match.group(1).rsplit("/", 1)[1]
    try:
      if method == "DownloadModelInstanceVersion":
        self._send(200, self.state.version_file(request), "application/octet-stream")
        return
      barrier = self.state.version_barrier
      if method == "CreateModelInstanceVersion" and barrier is not None:
        barrier.wait(timeout=120)
      with self.state.lock:
        self.state.calls.append((method, request))
        response = KaggleState.METHODS[match.group(1)](self.state, user, request)
    except ApiError as error:
      self._json(error.code, {"code": error.code, "message": str(error)})
      return
    self._json(200, response)

  def do_PUT(self):  # pylint: disable=invalid-name
    token = self.path.rsplit("/", 1)[-1]
    with self.state.lock:
      blob = self.state.blobs.get(token)
    if blob is None:
      self._body()
      self._json(404, {"code": 404, "message": "unknown upload"})
      return
    content_range = self.headers.get("Content-Range", "")
    status_query = re.fullmatch(r"bytes \*/(\d+)", content_range)
    data_range = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range)
    if status_query:
      self._body()
    elif data_range:
      start = int(data_range.group(1))
      with self.state.lock:
        self.state.upload_puts += 1
        fault = self.state.upload_faults > 0
        if fault:
          self.state.upload_faults -= 1
      if start > len(blob.data):
        self._body()
        self._json(400, {"code": 400, "message": "upload range starts past the received bytes"})
        return
      if fault:
        # Half of the body arrives, then the connection drops without an answer.
        length = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(length // 2)
        with self.state.lock:
          del blob.data[start:]
          blob.data += data
        self.close_connection = True
        self.connection.shutdown(2)
        return
      data = self._body()
      with self.state.lock:
        del blob.data[start:]
        blob.data += data[:blob.content_length - start]
    elif blob.content_length != 0:
      self._body()
      self._json(400, {"code": 400, "message": f"bad Content-Range {content_range!r}"})
      return
    if blob.complete:
      self._json(200, {})
    else:
      headers = {"Range": f"bytes=0-{len(blob.data) - 1}"} if blob.data else {}
      self._send(308, b"", headers=headers)

  def do_GET(self):  # pylint: disable=invalid-name
    url = urllib.parse.urlparse(self.path)
    match = re.fullmatch(r"/models/([^/]+)/([^/]+)/([^/]+)/([^/]+)/(\d+)", url.path)
    query = urllib.parse.parse_qs(url.query)
    archive = None
    if match and query.get("tf-hub-format") == ["compressed"]:
      owner, model, framework, variation, number = match.groups()
      archive = self.state.served_archive(owner, model, framework, variation, int(number))
    if archive is None:
      self._json(404, {"code": 404, "message": "not found"})
    else:
      self._send(200, archive, "application/x-tar")


class KaggleServer:
  """The fake API on 127.0.0.1:7777 in a background thread; `state` is what it holds."""

  def __init__(self, credentials: Dict[str, str]):
    self.state = KaggleState(credentials)
    handler = type("Handler", (_Handler,), {"state": self.state})
    try:
      self._server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), handler)
    except OSError as error:
      raise RuntimeError(f"cannot bind 127.0.0.1:{PORT} for the fake Kaggle API "
                         f"(another test using it is running?): {error}") from error
    self._server.daemon_threads = True
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  @property
  def url(self) -> str:
    return f"http://localhost:{PORT}"

  def __enter__(self) -> "KaggleServer":
    self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self._server.shutdown()
    self._server.server_close()
    self._thread.join()
