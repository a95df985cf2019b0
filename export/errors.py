"""The one family of export errors: every refusal or failure of the export and publishing tools.

The CLIs catch `ExportError` (and the input errors of hub_models) and print one `error: ...` line.
"""


class ExportError(RuntimeError):
  """An export or publish that cannot proceed; the message says why in one line."""
