"""Publishing destinations side by side, and the factory that picks one from --output_dir.

`gs://bucket/prefix` -> gcs.GcsDestination, `kaggle://OWNER/MODEL` -> kaggle's destination, any
other value -> local.LocalDestination (a folder). Each destination module offers
`from_url(output_dir: str, options: base.DestinationOptions) -> base.Destination`; the schemes are
data (below), so callers never branch on the kind of destination.
"""

import importlib

from . import base

# URL prefix -> module (in this package) offering from_url. Anything else is a local folder.
SCHEMES = {
    "gs://": "gcs",
    "kaggle://": "kaggle",
}
_LOCAL = "local"


def module_for(output_dir: str) -> str:
  """The name, relative to this package, of the destination module that `output_dir` names."""
  for prefix, module in SCHEMES.items():
    if output_dir.startswith(prefix):
      return module
  return _LOCAL


def open_destination(output_dir: str,
                     options: base.DestinationOptions = base.DestinationOptions()
                     ) -> base.Destination:
  """The destination for an --output_dir value.

  Raises:
    base.PublishError: the value is malformed for its kind, or its module cannot be used here.
  """
  module = importlib.import_module(f".{module_for(output_dir)}", __package__)
  return module.from_url(output_dir, options)
