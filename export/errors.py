"""The one family of export errors: every refusal or failure of the export and publishing tools.

Errors raised inside export/ are `ExportError`s; `pipeline.EXPORT_ERRORS` adds those of
hub_models (bad variant name, checkpoint, conversion, download). The CLIs catch those and print one
`error: ...` line. (No imports here: the docs tools use this without loading TensorFlow.)
"""


class ExportError(RuntimeError):
  """An export or publish that cannot proceed; the message says why in one line."""


def one_line(error: BaseException) -> str:
  """The error's message on one line (KeyError quotes its message; strip that)."""
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return " ".join(str(text).split())
