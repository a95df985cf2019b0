"""One run per output folder: an exclusive lock taken before the run touches the folder.

A local folder is locked with `flock` on `OUTPUT/.lock`, which holds the holder's host, pid and
start time. The kernel releases the lock when the holder exits, however it exits (SIGKILL
included), so a killed run never blocks the next one. A remote folder (gs://...) has no such
lock: there the lock is the object `OUTPUT/.lock` itself, created when absent and deleted at the
end; a run killed before deleting it leaves it behind, and the next run's error says which run
held it and that the object can be deleted once that run is gone.
"""

import fcntl
import json
import os
import socket
import time

import tensorflow as tf

from . import records

LOCK = ".lock"


def _describe(holder: str) -> str:
  try:
    info = json.loads(holder)
    return f"pid {info['pid']} on host {info['host']} (started {info['started']})"
  except (ValueError, KeyError, TypeError):
    return "another run"


class OutputLock:
  """Holds `output_dir`'s lock while the context is open (creating the folder if needed).

  Raises (on entry):
    records.OutputError: another run holds the lock (the message names it), or the folder
      cannot be created or locked.
  """

  def __init__(self, output_dir: str):
    self._output_dir = output_dir
    self._path = os.path.join(output_dir, LOCK)
    self._file = None
    self._remote = "://" in output_dir

  def _holder_record(self) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

  def _lock_local(self) -> None:
    try:
      os.makedirs(self._output_dir, exist_ok=True)
      lock_file = open(self._path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    except OSError as error:
      raise records.OutputError(
          f"cannot use output folder {self._output_dir}: {error.strerror or error}") from error
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock_file.seek(0)
      holder = lock_file.read()
      lock_file.close()
      raise records.OutputError(f"{self._output_dir} is in use by {_describe(holder)}: one run "
                                "per output folder at a time") from None
    try:
      lock_file.seek(0)
      lock_file.truncate()
      lock_file.write(self._holder_record())
      lock_file.flush()
    except OSError as error:
      lock_file.close()
      raise records.OutputError(
          f"cannot write {self._path}: {error.strerror or error}") from error
    self._file = lock_file

  def _lock_remote(self) -> None:
    with records.output_errors(self._path, "lock"):
      if tf.io.gfile.exists(self._path):
        with tf.io.gfile.GFile(self._path) as f:
          holder = f.read()
        raise records.OutputError(
            f"{self._output_dir} is in use by {_describe(holder)}: one run per output folder at "
            f"a time (if that run is gone, delete {self._path})")
      tf.io.gfile.makedirs(self._output_dir)
      with tf.io.gfile.GFile(self._path, "w") as f:
        f.write(self._holder_record())

  def __enter__(self) -> "OutputLock":
    if self._remote:
      self._lock_remote()
    else:
      self._lock_local()
    return self

  def __exit__(self, *unused_exc_info) -> None:
    if self._remote:
      tf.io.gfile.remove(self._path)
    else:
      self._file.close()  # Releases the flock; the file stays (removing it would race).
