"""What every publishing destination offers (local folder, gs://, Kaggle Models).

The pipeline (export/pipeline.py) builds, verifies and packages one version in a local folder and
hands it to a destination; it never branches on the kind of destination. The order of calls:

  destination.check(versions, overwrite)      # before any work: reachable, credentials, each
                                              # version acceptable (not published unless
                                              # overwrite; Kaggle: the number it assigns next)
  destination.remove_stale_staging(progress)  # leftovers whose owner is provably gone
  for each version:
    with destination.begin(version, overwrite) as transaction:   # lock / claim the version
      ...build into transaction.work_dir...     # local files, see BuiltVersion
      transaction.commit(built)                 # the version appears whole, once, or not at all
  destination.write_docs(docs_dir)            # docs generated from destination.published()

A transaction left without `commit` (an exception, a refused build) is aborted: nothing of the
new version is visible and, for `overwrite`, the old version is untouched byte for byte. A
process killed at any moment leaves the destination with no version, the complete old one or the
complete new one; its leftovers are removed by a later `remove_stale_staging`.
"""

import abc
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

from .. import errors

Manifest = Dict[str, Any]  # the JSON record export/packaging.py writes; has "model", "version".
Progress = Callable[[str], None]


class PublishError(errors.ExportError):
  """A destination refused or failed to publish; the message is one line (which version, why)."""


class AlreadyPublishedError(PublishError):
  """The version exists and overwrite was not asked for: versions are immutable."""


class VersionBusyError(PublishError):
  """Another publisher holds this version right now; the message names the holder."""


@dataclasses.dataclass(frozen=True)
class VersionId:
  """One version of one Hub model: `name` as published_models names it, `version` >= 1."""
  name: str
  version: int

  def __str__(self) -> str:
    return f"{self.name}/{self.version}"


@dataclasses.dataclass(frozen=True)
class BuiltVersion:
  """A version built and verified locally, ready to publish.

  Attributes:
    id: which version.
    savedmodel_dir: local folder of the SavedModel (saved_model.pb, variables/, ...).
    archive: local `.tar.gz` of the same files at the archive root.
    manifest_path: local JSON file of `manifest`.
    manifest: the manifest's content (its archive_sha256 is the archive's sha256).
  """
  id: VersionId
  savedmodel_dir: str
  archive: str
  manifest_path: str
  manifest: Manifest


class Transaction(abc.ABC):
  """Exclusive hold on one version, from `Destination.begin` to commit or abort.

  Use as a context manager: leaving the block without `commit` aborts. `work_dir` is an empty
  local folder owned by this transaction, where the pipeline builds the version (a local
  destination puts it on the same file system so the commit is renames).
  """

  work_dir: str

  @abc.abstractmethod
  def commit(self, built: BuiltVersion) -> str:
    """Publishes `built` whole and returns its handle (what users load).

    Until this returns, readers see no new version (or, with overwrite, the complete old one).

    Raises:
      PublishError: nothing of the new version is visible; an old version is intact.
    """

  @abc.abstractmethod
  def abort(self) -> None:
    """Releases the hold and removes `work_dir` and anything staged; never raises."""

  def __enter__(self) -> "Transaction":
    return self

  def __exit__(self, *exc_info) -> None:
    self.abort()  # after a commit, abort only releases what is left


@dataclasses.dataclass(frozen=True)
class DestinationOptions:
  """Settings every destination accepts (each uses those that apply to it)."""
  # Where no lock can prove a publisher gone (object stores), its claim and staging count as
  # abandoned only when older than this.
  stale_after_s: float = 24 * 3600.0
  # Object stores: a commit (the swap into place, which only copies) renews its claim at every
  # step; one not renewed for this long is a dead run's, which the next run rolls forward.
  commit_lease_s: float = 60.0


@dataclasses.dataclass(frozen=True)
class DocsOptions:
  """What the doc writers need beyond the manifests."""
  publisher: str  # tfhub.dev publisher id
  asset_base_url: Optional[str] = None  # where archives are served; None: the destination's own


class Destination(abc.ABC):
  """Where versions are published. `root` is the --output_dir value it was made from."""

  root: str

  @abc.abstractmethod
  def check(self, versions: Sequence[VersionId], overwrite: bool) -> None:
    """Checks, before any work, that every version can be published here.

    Raises:
      PublishError: unreachable, bad credentials (never printed), or a version not acceptable
        (AlreadyPublishedError without overwrite; a number the destination would not assign).
    """

  @abc.abstractmethod
  def begin(self, version: VersionId, overwrite: bool) -> Transaction:
    """Takes the exclusive hold on `version` and checks again that it may be published.

    Raises:
      VersionBusyError: another publisher holds it (the message names the holder).
      AlreadyPublishedError: it exists and overwrite is False.
    """

  @abc.abstractmethod
  def published(self) -> List[Manifest]:
    """The manifests of every complete version present, sorted by (model, version).

    Incomplete versions (being published, or left by a killed run) are never listed.
    """

  @abc.abstractmethod
  def handle(self, version: VersionId) -> str:
    """What users pass to hub.KerasLayer / hub.load for `version` (path or URL)."""

  @abc.abstractmethod
  def write_docs(self, options: DocsOptions, progress: Progress) -> List[str]:
    """Writes this destination's docs for every version in `published()`; returns what it wrote
    (paths or URLs)."""

  @abc.abstractmethod
  def remove_stale_staging(self, progress: Progress) -> List[str]:
    """Removes staging whose owner is provably gone (never by pid alone); returns what it removed.
    Staging of a live publisher, on this host or another, is kept."""
