r"""Writes the tfhub.dev docs of the exported models and checks them with the validator.

  python -m video_swin_hub.export.write_docs --output_dir=DIR --asset_base_url=URL \
      [--publisher=ID] [--version=N] [--variants=a,b] [--outputs=features,logits,feature_map] \
      [--input_size=32,224,224] [--write_collection_md=PATH]

writes `DIR/tfhub.dev/assets/docs/<publisher>/`: the publisher page, one model doc per variant
(default: the collection) and output (default: the pooled feature) and the collection doc, each
archive expected at `URL/<model>/<version>.tar.gz`, as `video_swin_hub.export.export_all` names them. Nothing is
exported. The tool exits 1 if the written docs break a tfhub.dev rule, printing each problem on
one line.
"""

import os
import sys

from absl import app
from absl import flags

from . import files
from . import published_models
from .docs import kaggle as kaggle_docs
from .docs import tfhub
from .docs import validator
from ..hub_models import variants

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write the docs tree.",
                                  required=True)
_ASSET_BASE_URL = flags.DEFINE_string(
    "asset_base_url", None,
    "URL under which the archives are served as <variant>/<version>.tar.gz.", required=True)
_PUBLISHER = flags.DEFINE_string("publisher", tfhub.DEFAULT_PUBLISHER, "tfhub.dev publisher id.")
_VERSION = flags.DEFINE_integer("version", 1, "Model version (a positive integer).", lower_bound=1)
_VARIANTS = flags.DEFINE_list("variants", None,
                              "Variants to document (default: the collection's).")
_OUTPUTS = flags.DEFINE_list(
    "outputs", [published_models.DEFAULT_OUTPUT],
    "Outputs to document, each its own Hub model (as export_all --outputs): "
    + ",".join(published_models.OUTPUTS) + ".")
_INPUT_SIZE = flags.DEFINE_list("input_size", ["32", "224", "224"],
                                "Frames,height,width of the exported input.")
_WRITE_COLLECTION_MD = flags.DEFINE_string(
    "write_collection_md", None,
    "Also write the repository's collection.md (the Kaggle model card) to this path.")


def main(argv):
  del argv
  try:
    selected = ([variants.get(name) for name in _VARIANTS.value] if _VARIANTS.value
                else list(variants.collection()))
    input_size = published_models.parse_input_size(_INPUT_SIZE.value)
    outputs = [published_models.get_output(key) for key in dict.fromkeys(_OUTPUTS.value)]
  except (variants.UnknownVariantError, published_models.InputSizeError,
          published_models.UnknownOutputError) as error:
    sys.exit(f"error: {error}")

  models = [published_models.PublishedModel(v, output, input_size)
            for v in selected for output in outputs]
  written = tfhub.write_tree(_OUTPUT_DIR.value, [(m, _VERSION.value) for m in models],
                             _PUBLISHER.value, _ASSET_BASE_URL.value)
  if _WRITE_COLLECTION_MD.value:
    files.write_text_atomically(_WRITE_COLLECTION_MD.value, kaggle_docs.repository_model_card())
    written.append(_WRITE_COLLECTION_MD.value)

  problems = validator.validate_docs_root(os.path.join(_OUTPUT_DIR.value, tfhub.DOCS_DIR))
  for problem in problems:
    print(problem, file=sys.stderr)
  if problems:
    sys.exit(1)
  for path in written:
    print(path)


def cli_main():
  """The `video-swin-write-docs` console script."""
  app.run(main)


if __name__ == "__main__":
  cli_main()
