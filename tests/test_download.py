"""Tests for hub_models.download against a local HTTP server (no network access)."""

import hashlib
import http.server
import logging
import multiprocessing
import os
import re
import threading

import numpy as np
import pytest

from video_swin_hub.hub_models import download

_DATA = np.random.default_rng(0).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
_DATA_SHA256 = hashlib.sha256(_DATA).hexdigest()


class _Behaviour:
  """What the test server does next; tests set these fields, the handler reads and records."""

  def __init__(self):
    self.cut_after = None  # Send only this many body bytes of the next response, then hang up.
    self.errors_left = 0  # Answer this many requests with HTTP 500.
    self.not_found = False  # Answer every request with HTTP 404.
    self.ignore_range = False  # Answer Range requests with the whole file and HTTP 200.
    self.ranges = []  # Range header of each request received (None when absent).


class _Handler(http.server.BaseHTTPRequestHandler):

  def do_GET(self):  # pylint: disable=invalid-name
    behaviour = self.server.behaviour
    range_header = self.headers.get('Range')
    behaviour.ranges.append(range_header)
    if behaviour.not_found:
      self.send_error(404)
      return
    if behaviour.errors_left:
      behaviour.errors_left -= 1
      self.send_error(500)
      return
    start = 0
    if range_header and not behaviour.ignore_range:
      start = int(re.fullmatch(r'bytes=(\d+)-', range_header).group(1))
      if start >= len(_DATA):
        self.send_error(416)
        return
      self.send_response(206)
      self.send_header('Content-Range', f'bytes {start}-{len(_DATA) - 1}/{len(_DATA)}')
    else:
      self.send_response(200)
    body = _DATA[start:]
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    if behaviour.cut_after is not None:
      body, behaviour.cut_after = body[:behaviour.cut_after], None
    # HTTP/1.0: the connection closes after the handler returns, so a short body reads as a cut.
    self.wfile.write(body)

  def log_message(self, *args):  # Keep test output quiet.
    pass


@pytest.fixture(name='server')
def _server():
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
  httpd.daemon_threads = True
  httpd.behaviour = _Behaviour()
  # A short poll interval keeps shutdown() in teardown from waiting the default half second.
  thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()
  thread.join()


def _url(server, name='model.pth'):
  return f'http://127.0.0.1:{server.server_address[1]}/weights/{name}'


def _read(path):
  with open(path, 'rb') as f:
    return f.read()


def _fetch(url, cache_dir, **kwargs):
  kwargs.setdefault('backoff_s', 0.0)
  kwargs.setdefault('timeout_s', 5.0)
  return download.fetch(url, str(cache_dir), **kwargs)


def _files(folder) -> list:
  """The cache's files, without the per-URL lock files (kept so that every process locks one
  file)."""
  return [name for name in os.listdir(folder) if not name.endswith('.lock')]


def test_first_download_writes_file_and_sidecar(server, tmp_path):
  url = _url(server)
  path = _fetch(url, tmp_path)
  assert path == download.cache_path(url, str(tmp_path))
  key = hashlib.sha256(url.encode()).hexdigest()[:16]
  assert os.path.basename(path) == f'{key}-model.pth'
  assert _read(path) == _DATA
  assert _read(path + '.sha256').decode().strip() == _DATA_SHA256
  assert sorted(_files(tmp_path)) == sorted([os.path.basename(path), f'{key}-model.pth.sha256'])
  assert server.behaviour.ranges == [None]


def test_second_call_reuses_cache_without_request(server, tmp_path):
  url = _url(server)
  first = _fetch(url, tmp_path)
  second = _fetch(url, tmp_path, expected_sha256=_DATA_SHA256)
  assert second == first
  assert len(server.behaviour.ranges) == 1


def test_tampered_cache_raises_and_keeps_file(server, tmp_path):
  url = _url(server)
  path = _fetch(url, tmp_path)
  tampered = b'x' + _DATA[1:]
  with open(path, 'wb') as f:
    f.write(tampered)
  with pytest.raises(download.DownloadError, match='corrupt or was replaced') as info:
    _fetch(url, tmp_path)
  message = str(info.value)
  assert path in message
  assert _DATA_SHA256 in message and hashlib.sha256(tampered).hexdigest() in message
  assert 'delete' in message
  assert _read(path) == tampered
  assert len(server.behaviour.ranges) == 1


def test_cached_file_with_other_expected_digest_raises(server, tmp_path):
  url = _url(server)
  path = _fetch(url, tmp_path)
  with pytest.raises(download.DownloadError, match='corrupt or was replaced') as info:
    _fetch(url, tmp_path, expected_sha256='0' * 64)
  assert path in str(info.value) and '0' * 64 in str(info.value)
  assert _read(path) == _DATA


def test_expected_sha256_mismatch_leaves_nothing(server, tmp_path):
  url = _url(server)
  with pytest.raises(download.DownloadError, match=re.escape(url)) as info:
    _fetch(url, tmp_path, expected_sha256='ab' * 32)
  assert _DATA_SHA256 in str(info.value)
  assert _files(tmp_path) == []


def test_expected_sha256_match(server, tmp_path):
  path = _fetch(_url(server), tmp_path, expected_sha256=_DATA_SHA256.upper())
  assert _read(path) == _DATA


def test_interrupted_download_is_resumed_with_range(server, tmp_path):
  url = _url(server)
  path = download.cache_path(url, str(tmp_path))
  server.behaviour.cut_after = 100_000
  with pytest.raises(download.DownloadError, match='100000 of 300000'):
    _fetch(url, tmp_path, retries=0)
  assert _files(tmp_path) == [os.path.basename(path) + '.part']
  assert _read(path + '.part') == _DATA[:100_000]

  assert _read(_fetch(url, tmp_path, retries=0)) == _DATA
  assert server.behaviour.ranges == [None, 'bytes=100000-']
  assert not os.path.exists(path + '.part')
  assert _read(path + '.sha256').decode().strip() == _DATA_SHA256


def test_interruption_is_retried_within_one_call(server, tmp_path):
  server.behaviour.cut_after = 123_456
  assert _read(_fetch(_url(server), tmp_path, retries=1)) == _DATA
  assert server.behaviour.ranges == [None, 'bytes=123456-']


def test_server_ignoring_range_restarts(server, tmp_path):
  url = _url(server)
  server.behaviour.cut_after = 50_000
  server.behaviour.ignore_range = True
  with pytest.raises(download.DownloadError):
    _fetch(url, tmp_path, retries=0)
  path = _fetch(url, tmp_path, retries=0)
  assert _read(path) == _DATA
  assert server.behaviour.ranges == [None, 'bytes=50000-']


def test_complete_part_file_answered_416_restarts(server, tmp_path):
  url = _url(server)
  path = download.cache_path(url, str(tmp_path))
  with open(path + '.part', 'wb') as f:
    f.write(_DATA + b'extra')
  assert _read(_fetch(url, tmp_path, retries=0)) == _DATA
  assert server.behaviour.ranges == [f'bytes={len(_DATA) + 5}-', None]


def test_server_errors_are_retried(server, tmp_path):
  server.behaviour.errors_left = 2
  path = _fetch(_url(server), tmp_path, retries=2)
  assert _read(path) == _DATA
  assert len(server.behaviour.ranges) == 3


def test_server_errors_exhaust_retries(server, tmp_path):
  url = _url(server)
  server.behaviour.errors_left = 5
  with pytest.raises(download.DownloadError, match='HTTP 500') as info:
    _fetch(url, tmp_path, retries=2)
  assert url in str(info.value)
  assert len(server.behaviour.ranges) == 3


def test_not_found_raises_at_once(server, tmp_path):
  url = _url(server, 'missing.pth')
  server.behaviour.not_found = True
  with pytest.raises(download.DownloadError, match='404') as info:
    _fetch(url, tmp_path)
  assert url in str(info.value)
  assert len(server.behaviour.ranges) == 1
  assert _files(tmp_path) == []


def test_local_path_is_returned_unchanged(tmp_path):
  local = tmp_path / 'weights.pth'
  local.write_bytes(b'weights')
  cache_dir = tmp_path / 'cache'
  assert download.fetch(str(local), str(cache_dir)) == str(local)
  assert not cache_dir.exists()


def test_missing_local_path_raises(tmp_path):
  missing = str(tmp_path / 'nope.pth')
  with pytest.raises(download.DownloadError, match=re.escape(missing)):
    download.fetch(missing, str(tmp_path / 'cache'))


def test_file_url_is_cached(tmp_path):
  local = tmp_path / 'weights.pth'
  local.write_bytes(_DATA)
  url = local.as_uri()
  path = download.fetch(url, str(tmp_path / 'cache'))
  assert path != str(local)
  assert _read(path) == _DATA


def test_progress_counts_increase_to_total(server, tmp_path):
  calls = []
  _fetch(_url(server), tmp_path, progress=lambda done, total: calls.append((done, total)))
  assert len(calls) > 1
  done = [d for d, _ in calls]
  assert done == sorted(set(done))
  assert done[-1] == len(_DATA)
  assert {total for _, total in calls} == {len(_DATA)}


def test_resumed_progress_starts_after_part(server, tmp_path):
  server.behaviour.cut_after = 100_000
  calls = []
  record = lambda done, total: calls.append((done, total))
  _fetch(_url(server), tmp_path, retries=1, progress=record)
  resumed = calls[[d for d, _ in calls].index(100_000) + 1:]
  assert resumed and all(d > 100_000 and t == len(_DATA) for d, t in resumed)
  assert resumed[-1][0] == len(_DATA)


def test_default_progress_logs_through_absl(server, tmp_path, caplog):
  url = _url(server)
  with caplog.at_level(logging.INFO, logger='absl'):
    _fetch(url, tmp_path)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Downloading')]
  # A fast download gets only the final line; the rest are rate-limited to one a second.
  assert len(lines) == 1 and url in lines[0] and '100%' in lines[0]


def test_is_url():
  assert download.is_url('https://example.com/a.pth')
  assert download.is_url('HTTP://example.com/a.pth')
  assert download.is_url('file:///tmp/a.pth')
  assert not download.is_url('/tmp/a.pth')
  assert not download.is_url('ftp://example.com/a.pth')
  assert not download.is_url('checkpoints/a.pth')


def test_sha256_file(tmp_path):
  path = tmp_path / 'data.bin'
  path.write_bytes(_DATA)
  assert download.sha256_file(str(path)) == _DATA_SHA256


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def test_file_name_sha256_prefix_is_checked(server, tmp_path):
  """mmaction2 names end in the first 8 hex digits of the sha256: a match is accepted, anything
  else is refused and deleted."""
  good = _url(server, f'swin_20220930-{_sha256(_DATA)[:8]}.pth')
  assert _read(_fetch(good, tmp_path)) == _DATA
  bad = _url(server, 'swin_20220930-00000000.pth')
  with pytest.raises(download.DownloadError, match='does not start with the 00000000'):
    _fetch(bad, tmp_path)
  assert not os.path.exists(download.cache_path(bad, str(tmp_path)))
  assert download.trust(good, None) == 'sha256 prefix in the published file name'
  assert download.trust(_url(server), None).startswith('trust on first use')
  assert download.trust(_url(server), _DATA_SHA256) == 'sha256 published with the registry entry'


def _fetch_in_child(url, cache_dir):
  return _fetch(url, cache_dir)


def test_concurrent_fetches_of_one_url_download_once(server, tmp_path):
  """Four processes fetch one URL into one cache at once: one request, one complete file."""
  url = _url(server)
  with multiprocessing.get_context('fork').Pool(4) as pool:
    paths = pool.starmap(_fetch_in_child, [(url, str(tmp_path))] * 4)
  assert len(set(paths)) == 1 and _read(paths[0]) == _DATA
  assert len(server.behaviour.ranges) == 1  # the others waited on the lock, then reused it
  assert sorted(_files(tmp_path)) == sorted([os.path.basename(paths[0]),
                                             os.path.basename(paths[0]) + '.sha256'])
