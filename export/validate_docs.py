r"""Checks a tfhub.dev docs tree (and optionally SavedModel archives) against tfhub.dev's rules.

  python -m video_swin_hub.export.validate_docs --docs_root=DIR [--archives_root=DIR]

prints each problem on one line (`{file}:{line}: {problem}`, see export/docs/validator.py) and
exits 1 if there are any.
"""

import sys

from absl import app
from absl import flags

from .docs import validator

_DOCS_ROOT = flags.DEFINE_string("docs_root", None, "The assets/docs folder to check.")
_ARCHIVES_ROOT = flags.DEFINE_string(
    "archives_root", None, "Also check every .tar.gz below this folder as a SavedModel archive.")


def main(argv):
  del argv
  if not _DOCS_ROOT.value:
    sys.exit("error: --docs_root is required")
  problems = validator.validate(_DOCS_ROOT.value, _ARCHIVES_ROOT.value)
  for problem in problems:
    print(problem)
  if problems:
    sys.exit(1)


def cli_main():
  """The `video-swin-validate-docs` console script."""
  app.run(main)


if __name__ == "__main__":
  cli_main()
