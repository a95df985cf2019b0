"""Checks a tfhub.dev docs tree (and optionally SavedModel archives) against tfhub.dev's rules.

`docs_root` is the `assets/docs` folder of a tfhub.dev checkout: `<publisher>/<publisher>.md`,
`<publisher>/models/<name>/<version>.md` and `<publisher>/collections/<name>/1.md`. The rules are
those of tfhub.dev's own validator (tensorflow/tfhub.dev `tools/validator.py`), with the tag ids
this project can use. Every problem is reported as one line, `{file}:{line}: {problem}`; line 0
means the file as a whole. export/validate_docs.py is its command line.
"""

import dataclasses
import os
import posixpath
import re
import tarfile
from typing import Dict, List, Optional, Sequence, Tuple
import urllib.parse
import zlib


_PUBLISHER = r"[a-z\d-]+"
_MODEL_NAME = r"[\w.-]+(?:/[\w.-]+)*"
_HANDLE_PATTERNS = {
    "Module": re.compile(rf"# Module (?P<handle>{_PUBLISHER}/{_MODEL_NAME}/\d+)"),
    "Collection": re.compile(rf"# Collection (?P<handle>{_PUBLISHER}/[\w&;./-]+/\d+)"),
    "Publisher": re.compile(rf"# Publisher (?P<handle>{_PUBLISHER})"),
}
_METADATA_LINE = re.compile(r"<!--\s*(?P<key>[\w-]+)\s*:\s*(?P<value>.*?)\s*-->")
# Publisher pages may show an icon between the description and the first heading.
_ICON_LINE = "[![Icon URL]]("

# Allowed tag values: the tfhub.dev ids (tags/*.yaml) relevant to video and image models.
_TASKS = frozenset({
    "video-feature-extraction", "video-classification", "video-text", "video-audio-text",
    "video-generation", "image-feature-vector", "image-classification",
})
_ARCHITECTURES = frozenset({
    "video-swin-transformer", "swin-transformer", "vision-transformer", "mobilenet-v2",
    "efficientnet-b0", "resnet-v2-50", "i3d",
})
_DATASETS = frozenset({
    "kinetics-400", "kinetics-600", "kinetics-700", "imagenet", "imagenet-21k",
    "imagenet-ilsvrc-2012-cls", "charades", "youtube-8m", "ava", "multiple", "other",
})
_LICENSES = frozenset({
    "apache-2.0", "bsd-2-clause", "bsd-3-clause", "gpl-2.0", "gpl-3.0", "lgpl-2.0", "lgpl-2.1",
    "lgpl-3.0", "mit", "mpl-2.0", "cddl-1.0", "epl-2.0", "cc-by-4.0", "cc-by-nc-4.0", "custom",
})
_ALLOWED_VALUES = {
    "task": _TASKS,
    "network-architecture": _ARCHITECTURES,
    "dataset": _DATASETS,
    "license": _LICENSES,
    "format": frozenset({"saved_model_2"}),
    "fine-tunable": frozenset({"true", "false"}),
}
# Keys that may appear on several lines; every other key may appear once.
_MULTI_VALUED_KEYS = frozenset({"task", "dataset", "network-architecture"})
_ASSET_SCHEMES = frozenset({"https", "http", "gs"})


@dataclasses.dataclass(frozen=True)
class _DocRules:
  """The metadata keys a kind of doc must and may carry."""
  required: frozenset
  optional: frozenset


_RULES = {
    "Module": _DocRules(
        required=frozenset({"asset-path", "format", "task", "fine-tunable"}),
        optional=frozenset({"network-architecture", "dataset", "license", "colab", "demo"})),
    "Collection": _DocRules(required=frozenset({"task"}),
                            optional=frozenset({"network-architecture", "dataset"})),
    "Publisher": _DocRules(required=frozenset(), optional=frozenset()),
}

# Archive members allowed at the root, and folders whose contents are allowed.
_ARCHIVE_ROOT_FILES = frozenset({"saved_model.pb", "fingerprint.pb", "keras_metadata.pb"})
_ARCHIVE_ROOT_DIRS = frozenset({"variables", "assets"})
# tfhub.dev's rule for names inside an archive: no hidden files, no unusual characters.
_ARCHIVE_NAME = re.compile(r"[\w-][-!',\w.=:% ]*")


def _problem(path: str, line: int, message: str) -> str:
  return f"{path}:{line}: {message}"


def _expected_handle(relative_parts: Sequence[str]) -> Optional[Tuple[str, str]]:
  """The doc kind and handle that a file's place in the tree calls for, or None if tfhub.dev
  has no doc at that place."""
  if len(relative_parts) == 2 and relative_parts[1] == f"{relative_parts[0]}.md":
    return "Publisher", relative_parts[0]
  if len(relative_parts) < 4:
    return None
  publisher, section, *name_parts, file_name = relative_parts
  name = "/".join(name_parts)
  if section == "models" and re.fullmatch(r"\d+\.md", file_name):
    return "Module", f"{publisher}/{name}/{file_name[:-3]}"
  if section == "collections" and len(name_parts) == 1 and file_name == "1.md":
    return "Collection", f"{publisher}/{name}/1"
  return None


def _check_asset_path(value: str) -> Optional[str]:
  url = urllib.parse.urlparse(value)
  host = (url.hostname or "").lower()
  if url.scheme not in _ASSET_SCHEMES:
    return f"asset-path {value!r} must be an http(s) or gs:// URL"
  if not url.path.endswith(".tar.gz"):
    return f"asset-path {value!r} must end with .tar.gz"
  if host == "github.com" or host.endswith(".github.com"):
    return f"asset-path {value!r} is on github.com, which tfhub.dev cannot fetch from"
  return None


def _check_value(key: str, value: str) -> Optional[str]:
  """Why `value` is not allowed for `key`, or None if it is."""
  if key == "asset-path":
    return _check_asset_path(value)
  if key in ("colab", "demo"):
    return None if value.startswith("https://") else f"{key} must be an https:// URL"
  allowed = _ALLOWED_VALUES.get(key)
  if allowed is not None and value not in allowed:
    return f"{key} {value!r} is not one of: {', '.join(sorted(allowed))}"
  return None


def _parse_header(path: str, lines: Sequence[str], kind: str,
                  problems: List[str]) -> Dict[str, List[Tuple[int, str]]]:
  """Reads the description and metadata after the first line, recording problems; returns the
  metadata as (line, value) pairs by key."""
  index = 1
  while index < len(lines) and not lines[index].strip():
    index += 1
  if index >= len(lines) or lines[index].startswith(("#", "<!--")):
    problems.append(_problem(path, min(index, len(lines) - 1) + 1,
                             "missing the one-line description after the first line"))
  # Like tfhub.dev, a description runs until a blank line, metadata or a heading.
  while index < len(lines) and lines[index].strip() and not lines[index].startswith(("#", "<!--")):
    index += 1

  metadata: Dict[str, List[Tuple[int, str]]] = {}
  while index < len(lines) and not lines[index].startswith("#"):
    line = lines[index].strip()
    match = _METADATA_LINE.fullmatch(line)
    if match:
      metadata.setdefault(match["key"], []).append((index + 1, match["value"]))
    elif line.startswith("<!--"):
      problems.append(_problem(path, index + 1, f"malformed metadata line {line!r}"))
    elif line and not (kind == "Publisher" and line.startswith(_ICON_LINE)):
      problems.append(_problem(
          path, index + 1, "only <!-- key: value --> metadata lines may come between the "
          f"description and the first heading, found {line!r}"))
    index += 1
  return metadata


def _check_metadata(path: str, kind: str, metadata: Dict[str, List[Tuple[int, str]]],
                    problems: List[str]) -> None:
  rules = _RULES[kind]
  for key in sorted(rules.required - set(metadata)):
    problems.append(_problem(path, 1, f"required metadata key {key!r} is missing"))
  for key, entries in metadata.items():
    first_line = entries[0][0]
    if key not in rules.required | rules.optional:
      problems.append(_problem(path, first_line, f"metadata key {key!r} is not allowed in a "
                               f"{kind} doc"))
      continue
    if len(entries) > 1 and key not in _MULTI_VALUED_KEYS:
      problems.append(_problem(path, entries[1][0], f"metadata key {key!r} may appear only once"))
    for line, value in entries:
      reason = _check_value(key, value)
      if reason:
        problems.append(_problem(path, line, reason))


def _linked_models(collection_path: str, lines: Sequence[str],
                   docs_root: str) -> List[Tuple[int, str, bool]]:
  """The models a collection links to: (line, what the link names, whether its doc exists)."""
  links = []
  for number, line in enumerate(lines, start=1):
    for url in re.findall(r"https?://tfhub\.dev/([^\s)\]>\"'#?]+)", line):
      parts = url.strip("/").split("/")
      # A bare publisher or a collection is not a model.
      if len(parts) < 2 or parts[1] == "collection":
        continue
      if len(parts) > 2 and parts[-1].isdigit():
        doc_exists = os.path.isfile(os.path.join(docs_root, parts[0], "models", *parts[1:-1],
                                                 f"{parts[-1]}.md"))
      else:
        model_dir = os.path.join(docs_root, parts[0], "models", *parts[1:])
        doc_exists = os.path.isdir(model_dir) and any(
            re.fullmatch(r"\d+\.md", f) for f in os.listdir(model_dir))
      links.append((number, "/".join(parts), doc_exists))
    for target in re.findall(r"\]\(([^)\s:]+\.md)\)", line):
      resolved = os.path.normpath(os.path.join(os.path.dirname(collection_path), target))
      relative = os.path.relpath(resolved, docs_root).split(os.sep)
      if len(relative) >= 4 and relative[1] == "models":
        links.append((number, target, os.path.isfile(resolved)))
  return links


def validate_doc(docs_root: str, path: str) -> List[str]:
  """Checks one doc file of the tree rooted at `docs_root`; returns its problems."""
  relative_parts = os.path.relpath(path, docs_root).split(os.sep)
  expected = _expected_handle(relative_parts)
  if expected is None:
    return [_problem(path, 0, "not a place for a tfhub.dev doc (expected <publisher>/"
                     "<publisher>.md, <publisher>/models/<name>/<version>.md or "
                     "<publisher>/collections/<name>/1.md)")]
  kind, handle = expected
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().split("\n")
  except UnicodeDecodeError as error:
    return [_problem(path, 0, f"not UTF-8 text: {error}")]
  problems = []
  first = lines[0].replace("&zwnj;", "").rstrip()
  match = _HANDLE_PATTERNS[kind].fullmatch(first)
  if not match or match["handle"] != handle:
    problems.append(_problem(path, 1, f"first line must be '# {kind} {handle}' (from the "
                             f"file's path), found {first!r}"))
  metadata = _parse_header(path, lines, kind, problems)
  _check_metadata(path, kind, metadata, problems)
  if kind == "Collection":
    links = _linked_models(path, lines, docs_root)
    if not links:
      problems.append(_problem(path, 0, "a collection must link at least one model"))
    for line, target, doc_exists in links:
      if not doc_exists:
        problems.append(_problem(path, line, f"links model {target!r}, which has no model doc "
                                 f"under {docs_root}"))
  return problems


def validate_docs_root(docs_root: str) -> List[str]:
  """Checks every file under `docs_root` and that each publisher has a page."""
  paths = sorted(os.path.join(directory, name)
                 for directory, _, names in os.walk(docs_root) for name in names)
  if not paths:
    return [_problem(docs_root, 0, "no docs found")]
  problems = []
  first_doc_of_publisher = {}
  for path in paths:
    if not path.endswith(".md"):
      problems.append(_problem(path, 0, "unexpected file: a docs tree holds only .md files"))
      continue
    first_doc_of_publisher.setdefault(os.path.relpath(path, docs_root).split(os.sep)[0], path)
    problems.extend(validate_doc(docs_root, path))
  for publisher, path in sorted(first_doc_of_publisher.items()):
    page = os.path.join(docs_root, publisher, f"{publisher}.md")
    if not os.path.isfile(page):
      problems.append(_problem(path, 1, f"publisher {publisher!r} has no publisher page {page}"))
  return problems


def validate_archive(path: str) -> List[str]:
  """Checks a SavedModel archive as tfhub.dev serves it; returns its problems."""
  # Importing TensorFlow takes seconds: only archive checks need it.
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top

  if not path.endswith(".tar.gz"):
    return [_problem(path, 0, "a SavedModel archive must be a .tar.gz file")]
  problems = []
  saved_model_found = False
  try:
    with tarfile.open(path, "r:gz") as tar:
      for member in tar.getmembers():
        name = member.name
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in name.split("/"):
          problems.append(_problem(path, 0, f"member {name!r} points outside the archive"))
          continue
        if not parts:  # The archive root itself ("./").
          continue
        relative = posixpath.join(*parts)
        if not (member.isfile() or member.isdir()):
          problems.append(_problem(path, 0, f"member {relative!r} is not a regular file or "
                                   "folder"))
        elif not (relative in _ARCHIVE_ROOT_FILES or parts[0] in _ARCHIVE_ROOT_DIRS):
          problems.append(_problem(
              path, 0, f"member {relative!r} is not at an allowed root path (saved_model.pb, "
              "variables/, assets/, fingerprint.pb, keras_metadata.pb); the archive must not "
              "have a top-level folder"))
        elif not all(_ARCHIVE_NAME.fullmatch(p) for p in parts):
          problems.append(_problem(path, 0, f"member {relative!r} has a hidden or unusual name"))
        elif relative == "saved_model.pb" and member.isfile():
          saved_model_found = True
          try:
            saved_model = saved_model_pb2.SavedModel.FromString(tar.extractfile(member).read())
            if not saved_model.meta_graphs:
              problems.append(_problem(path, 0, "saved_model.pb holds no MetaGraph"))
          except message.DecodeError as error:
            problems.append(_problem(path, 0, f"saved_model.pb does not parse as a SavedModel "
                                     f"protobuf: {error}"))
  except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
    return problems + [_problem(path, 0, f"not a readable .tar.gz archive: {error}")]
  if not saved_model_found:
    problems.append(_problem(path, 0, "no saved_model.pb at the archive root"))
  return problems


def validate_archives_root(archives_root: str) -> List[str]:
  """Checks every *.tar.gz under `archives_root`."""
  archives = sorted(os.path.join(directory, name)
                    for directory, _, names in os.walk(archives_root)
                    for name in names if name.endswith(".tar.gz"))
  if not archives:
    return [_problem(archives_root, 0, "no .tar.gz archives found")]
  return [problem for archive in archives for problem in validate_archive(archive)]


def validate(docs_root: str, archives_root: Optional[str] = None) -> List[str]:
  """All problems of a docs tree and, if given, of the archives under `archives_root`."""
  problems = validate_docs_root(docs_root)
  if archives_root:
    problems += validate_archives_root(archives_root)
  return problems

