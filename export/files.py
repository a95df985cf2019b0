"""The one helper that writes a local file atomically (archives, manifests, docs, journals)."""

import os
import tempfile
from typing import BinaryIO, Callable


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write(binary_file)` on a temporary file beside `path`, flushes it to disk, then renames
  it onto `path`: readers and a SIGKILL see the old file or the whole new one, never part."""
  directory = os.path.dirname(path) or "."
  fd, temp_path = tempfile.mkstemp(prefix=".tmp-", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp_path, path)
  except BaseException:
    os.unlink(temp_path)
    raise


def write_text_atomically(path: str, text: str) -> None:
  """`write_atomically` for UTF-8 text."""
  write_atomically(path, lambda f: f.write(text.encode("utf-8")))
