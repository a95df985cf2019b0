"""Fetching official checkpoints into a local cache that is verified on every use.

`fetch(url, cache_dir)` downloads `url` once into `cache_dir` and returns the local path. The cache
is keyed by URL, and each cached file has a `.sha256` sidecar with the digest computed when it was
downloaded; every later use recomputes the digest and refuses a file that no longer matches.
Downloads go to a `.part` file that is resumed with an HTTP Range request after an interruption and
is renamed into place only once complete and verified, so a file that looks complete is complete.
Concurrent fetches of one URL into one cache (threads, processes, hosts sharing the folder) take an
exclusive flock on `<file>.lock`: one downloads, the others wait and then reuse its file.

What a digest is checked against (`trust`): the registry's sha256 when its publisher states one;
else the 8 hex digits that mmaction2 puts at the end of its file names (`..._20220930-241016b2.pth`,
the start of the file's sha256); else nothing: the digest of the first download is recorded and
every later use must match it (trust on first use), which the manifest states.
"""

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterator, Optional

from absl import logging

ProgressFn = Callable[[int, Optional[int]], None]

_URL_SCHEMES = ('http', 'https', 'file')
# Small enough that progress is reported often, large enough that per-chunk overhead is negligible.
_CHUNK_BYTES = 64 * 1024
# Errors from the connection itself (reset, timeout, garbled or truncated response): worth a retry.
_TRANSIENT_ERRORS = (ConnectionError, TimeoutError, http.client.HTTPException)
# mmaction2 names its checkpoints <config>_<date>-<first 8 hex digits of the sha256>.pth.
_NAME_SHA256_PREFIX = re.compile(r"-([0-9a-f]{8})\.pth$")


class DownloadError(RuntimeError):
  """A download failed or a cached file failed verification; the message names the URL or file."""


class _TransientError(Exception):
  """An attempt failed in a way that another attempt may not; `fetch` retries these."""


def is_url(s: str) -> bool:
  """Whether `s` is an http, https or file URL (as opposed to a plain local path)."""
  return urllib.parse.urlparse(s).scheme.lower() in _URL_SCHEMES


def sha256_file(path: str) -> str:
  """The hex sha256 of the file at `path`, read in chunks so large checkpoints fit in memory."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK_BYTES), b''):
      digest.update(chunk)
  return digest.hexdigest()


def name_sha256_prefix(url: str) -> Optional[str]:
  """The sha256 prefix an mmaction2-style file name carries, or None."""
  match = _NAME_SHA256_PREFIX.search(urllib.parse.urlparse(url).path)
  return match.group(1) if match else None


def trust(url: str, expected_sha256: Optional[str]) -> str:
  """How `fetch(url, ..., expected_sha256)` establishes the file's digest, in words."""
  if not is_url(url):
    return "local file, not checked against a published digest"
  if expected_sha256:
    return "sha256 published with the registry entry"
  if name_sha256_prefix(url):
    return "sha256 prefix in the published file name"
  return "trust on first use: no published digest; the first download's sha256 is recorded"


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
  """Holds an exclusive flock on `path` (created if missing; never deleted, so that every
  process locks the same file)."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)


def cache_path(url: str, cache_dir: str) -> str:
  """Where `fetch` keeps the file for `url`: `<sha256 of url>[:16]-<basename of the url path>`."""
  key = hashlib.sha256(url.encode('utf-8')).hexdigest()[:16]
  basename = os.path.basename(urllib.parse.urlparse(url).path) or 'download'
  return os.path.join(cache_dir, f'{key}-{basename}')


class _LogProgress:
  """Default progress reporter: an absl INFO line at most once per second, and one at the end."""

  def __init__(self, url: str, interval_s: float = 1.0):
    self._url = url
    self._interval_s = interval_s
    self._last_s = time.monotonic()

  def __call__(self, done: int, total: Optional[int]) -> None:
    now = time.monotonic()
    if now - self._last_s < self._interval_s and done != total:
      return
    self._last_s = now
    if total:
      logging.info('Downloading %s: %.1f of %.1f MiB (%d%%)', self._url, done / 2**20,
                   total / 2**20, 100 * done // total)
    else:
      logging.info('Downloading %s: %.1f MiB', self._url, done / 2**20)


def fetch(url: str,
          cache_dir: str,
          expected_sha256: Optional[str] = None,
          progress: Optional[ProgressFn] = None,
          retries: int = 3,
          backoff_s: float = 0.5,
          timeout_s: float = 60.0) -> str:
  """Returns a local path holding the file at `url`, downloading it into `cache_dir` if needed.

  Args:
    url: an http(s) or file URL; a plain path to an existing local file is returned unchanged.
    cache_dir: directory of the cache (created if missing).
    expected_sha256: hex digest the file must have; checked on download and on every reuse.
    progress: called as `progress(done_bytes, total_bytes_or_None)` while bytes arrive; by default
      progress is logged with absl at most once per second.
    retries: how many times a transient failure (connection reset, timeout, truncated body,
      HTTP 5xx) is retried before giving up.
    backoff_s: delay before the first retry; it doubles for each further retry.
    timeout_s: socket timeout of each request.

  Returns:
    The path of the verified local file.

  Raises:
    DownloadError: the download failed (HTTP 4xx at once, transient errors after the retries), its
      digest differs from `expected_sha256`, or the cached file fails verification.
  """
  if not is_url(url):
    if os.path.isfile(url):
      return url
    raise DownloadError(f'{url} is neither an http(s)/file URL nor an existing local file')
  if expected_sha256 is not None:
    expected_sha256 = expected_sha256.strip().lower()
  os.makedirs(cache_dir, exist_ok=True)
  path = cache_path(url, cache_dir)
  with _exclusive(path + '.lock'):
    if os.path.exists(path):
      _verify_cached(path, expected_sha256, name_sha256_prefix(url))
      return path
    _download(url, path, expected_sha256, progress, retries, backoff_s, timeout_s)
  return path


def _download(url: str, path: str, expected_sha256: Optional[str],
              progress: Optional[ProgressFn], retries: int, backoff_s: float,
              timeout_s: float) -> None:
  """Downloads `url` to `path` via `path.part` (the caller holds the lock), then verifies it."""
  part = path + '.part'
  report = progress if progress is not None else _LogProgress(url)
  for attempt in range(retries + 1):
    try:
      _download_once(url, part, report, timeout_s)
      break
    except _TransientError as e:
      if attempt == retries:
        raise DownloadError(f'{url}: {e}; gave up after {retries + 1} attempts (the partial '
                            f'download {part} is kept and resumed by the next call)') from e
      delay_s = backoff_s * 2**attempt
      logging.warning('%s: %s; retrying in %.1f s (retry %d of %d)', url, e, delay_s, attempt + 1,
                      retries)
      time.sleep(delay_s)

  digest = sha256_file(part)
  if expected_sha256 is not None and digest != expected_sha256:
    os.remove(part)
    raise DownloadError(f'{url} downloaded with sha256 {digest} but {expected_sha256} was '
                        'expected; the download was deleted')
  prefix = name_sha256_prefix(url)
  if prefix is not None and not digest.startswith(prefix):
    os.remove(part)
    raise DownloadError(f'{url} downloaded with sha256 {digest}, which does not start with the '
                        f'{prefix} its file name states; the download was deleted')
  # The sidecar goes first: a crash between the two renames then leaves no final file without its
  # digest, only a stale sidecar that the next download overwrites.
  _write_atomically(path + '.sha256', digest + '\n')
  os.replace(part, path)


def _verify_cached(path: str, expected_sha256: Optional[str],
                   expected_prefix: Optional[str] = None) -> None:
  """Raises DownloadError unless `path` still has its recorded digest (and the expected one)."""
  sidecar = path + '.sha256'
  try:
    with open(sidecar) as f:
      recorded = f.read().strip()
  except FileNotFoundError:
    raise DownloadError(f'cached file {path} has no recorded sha256 ({sidecar} is missing); '
                        'delete it to download it again') from None
  actual = sha256_file(path)
  for wanted, source in ((recorded, 'recorded'), (expected_sha256, 'expected')):
    if wanted is not None and actual != wanted:
      raise DownloadError(f'cached file {path} is corrupt or was replaced: its sha256 is {actual} '
                          f'but {wanted} was {source}; delete it to download it again')
  if expected_prefix is not None and not actual.startswith(expected_prefix):
    raise DownloadError(f'cached file {path} has sha256 {actual}, which does not start with the '
                        f'{expected_prefix} its file name states; delete it to download it again')


def _download_once(url: str, part: str, progress: ProgressFn, timeout_s: float) -> None:
  """One attempt to complete `part`, resuming it when it already has bytes.

  Raises:
    _TransientError: the attempt failed in a way worth retrying; received bytes stay in `part`.
    DownloadError: the attempt failed in a way a retry would not fix.
  """
  offset = os.path.getsize(part) if os.path.exists(part) else 0
  request = urllib.request.Request(url)
  if offset:
    request.add_header('Range', f'bytes={offset}-')
  try:
    response = urllib.request.urlopen(request, timeout=timeout_s)
  except urllib.error.HTTPError as e:
    e.close()
    if e.code == 416 and offset:
      # The .part is at least as long as the file, so it cannot be a prefix of it: start over.
      os.remove(part)
      return _download_once(url, part, progress, timeout_s)
    if e.code >= 500:
      raise _TransientError(f'HTTP {e.code} {e.reason}') from e
    raise DownloadError(f'HTTP {e.code} {e.reason} for {url}') from e
  except urllib.error.URLError as e:
    if isinstance(e.reason, _TRANSIENT_ERRORS):
      raise _TransientError(str(e.reason)) from e
    raise DownloadError(f'cannot open {url}: {e.reason}') from e
  except _TRANSIENT_ERRORS as e:
    raise _TransientError(repr(e)) from e

  with response:
    # file:// responses have no status code; like a 200, they carry the whole file.
    resumed = offset > 0 and response.getcode() == 206
    if resumed:
      _check_content_range(url, response.headers.get('Content-Range'), offset)
    elif offset:
      logging.info('%s: the server ignored the Range request; downloading from the start', url)
    length = response.headers.get('Content-Length')
    expected_bytes = int(length) if length is not None else None
    done = offset if resumed else 0
    total = done + expected_bytes if expected_bytes is not None else None
    received = 0
    try:
      with open(part, 'ab' if resumed else 'wb') as f:
        for chunk in iter(lambda: response.read(_CHUNK_BYTES), b''):
          f.write(chunk)
          received += len(chunk)
          progress(done + received, total)
    except _TRANSIENT_ERRORS as e:
      raise _TransientError(f'{e!r} after {received} bytes') from e
  # urllib does not flag a body cut short of its Content-Length; the bytes so far are kept.
  if expected_bytes is not None and received != expected_bytes:
    raise _TransientError(f'connection closed after {received} of {expected_bytes} bytes')


def _check_content_range(url: str, content_range: Optional[str], offset: int) -> None:
  """Refuses a 206 answer whose range does not start where the .part ends."""
  # Content-Range: bytes <first>-<last>/<size or *>
  if content_range is not None:
    first = content_range.replace('bytes', '', 1).strip().split('-', 1)[0]
    if first != str(offset):
      raise DownloadError(f'{url}: asked for bytes from {offset} but the server sent '
                          f'Content-Range: {content_range}')


def _write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` via a temporary file and `os.replace`, so readers never see half."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + '.')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    os.remove(tmp)
    raise
