"""What both export CLIs run: check everything, publish each model on its own, write the docs,
print the summary. The flags they share are defined here once (`CommonFlags`).

A bad input or destination ends the run with one `error: ...` line before any work. Then each
model succeeds or fails on its own (its reason is printed as it happens); the docs are written for
every complete version in the destination; the summary table lists each model, and the run ends
with one `error: ...` line naming the failures if there were any.
"""

import dataclasses
import os
import sys
from typing import Callable, Dict, List, Sequence, Union

from absl import flags

from . import errors
from . import pipeline
from . import published_models
from . import destinations
from .destinations import base
from .docs import tfhub
from ..hub_models import variants as variants_lib

CheckpointFor = Callable[[variants_lib.Variant], pipeline.Checkpoint]


class CommonFlags:
  """Defines the flags every export CLI has (call once, at import of the CLI module)."""

  def __init__(self):
    self.output_dir = flags.DEFINE_string(
        "output_dir", None, "Destination: a folder, gs://bucket/prefix or kaggle://OWNER/MODEL.",
        required=True)
    self.version = flags.DEFINE_integer("version", 1, "Model version (a positive integer).",
                                        lower_bound=1)
    self.overwrite = flags.DEFINE_bool(
        "overwrite", False,
        "Replace existing versions (the old one stays until the new one is complete).")
    self.input_size = flags.DEFINE_list("input_size", ["32", "224", "224"],
                                        "Frames,height,width of the exported input.")
    # A string checked by parse_models rather than DEFINE_enum, whose refusal is two lines.
    self.precision = flags.DEFINE_string(
        "precision", published_models.DEFAULT_PRECISION,
        "What the model computes in: " + " or ".join(published_models.PRECISIONS) + " (variables, "
        "input and output stay float32; bfloat16 models get the name suffix _bf16).")
    self.cache_dir = flags.DEFINE_string(
        "cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "video_swin_checkpoints"),
        "Where downloaded checkpoints are kept, keyed by URL.")
    self.publisher = flags.DEFINE_string("publisher", tfhub.DEFAULT_PUBLISHER,
                                         "tfhub.dev publisher id.")
    self.asset_base_url = flags.DEFINE_string(
        "asset_base_url", None,
        "Where the archives are served: <asset_base_url>/<name>/<N>.tar.gz goes in the docs. "
        "Default: the destination's own public location (a placeholder for a local folder).")
    self.stale_after_s = flags.DEFINE_float(
        "stale_after_s", base.DestinationOptions.stale_after_s,
        "Object stores only: a claim and staging older than this, left by a publisher that "
        "stopped, are abandoned and cleaned up.", lower_bound=0)


@dataclasses.dataclass(frozen=True)
class Failure:
  """A model this run could not publish."""
  model: published_models.PublishedModel
  reason: str


Outcome = Union[pipeline.PublishedVersion, Failure]


def summary(outcomes: Sequence[Outcome]) -> str:
  """A fixed-width table: model, version, archive MiB, sha256 prefix and seconds, or FAILED and
  the reason."""
  width = max([len("model")] + [len(o.model.name) for o in outcomes])
  lines = [f"{'model':<{width}}  version  archive MiB  sha256        seconds"]
  for o in outcomes:
    if isinstance(o, Failure):
      lines.append(f"{o.model.name:<{width}}  FAILED: {o.reason}")
    else:
      lines.append(f"{o.model.name:<{width}}  {o.version:>7}  {o.archive_bytes / 2**20:>11.1f}  "
                   f"{o.archive_sha256[:12]}  {o.seconds:>7.1f}")
  return "\n".join(lines)


def publish_all(models: Sequence[published_models.PublishedModel],
                destination: base.Destination, version: int, overwrite: bool,
                checkpoint_for: CheckpointFor) -> List[Outcome]:
  """Publishes each model on its own: a failure is recorded and the next model goes on. Each
  variant's checkpoint is fetched once."""
  outcomes: List[Outcome] = []
  checkpoints: Dict[str, pipeline.Checkpoint] = {}
  for index, model in enumerate(models, 1):
    def progress(stage, prefix=f"[{index}/{len(models)}] {model.name}"):
      print(f"{prefix}: {stage}", flush=True)

    try:
      name = model.variant.name
      if name not in checkpoints:
        checkpoints[name] = checkpoint_for(model.variant)
      outcomes.append(pipeline.publish(model, checkpoints[name], destination, version,
                                       overwrite, progress))
    except pipeline.EXPORT_ERRORS as error:
      reason = errors.one_line(error)
      print(f"{model.name}: error: {reason}", file=sys.stderr, flush=True)
      outcomes.append(Failure(model, reason))
  return outcomes


def failure_line(failures: Sequence[Failure], total: int) -> str:
  """The run's last line when models failed: the reason itself for a one-model run."""
  if total == 1:
    return f"error: {failures[0].reason}"
  return (f"error: {len(failures)} of {total} models failed: "
          + "; ".join(f"{f.model.name} ({f.reason})" for f in failures))


def run(models: Sequence[published_models.PublishedModel], checkpoint_for: CheckpointFor,
        common: CommonFlags, prechecks: Callable[[], None] = lambda: None) -> None:
  """Checks, publishes `models`, writes the docs, prints the summary; exits non-zero on failure.

  `prechecks` runs first with the destination checks (e.g. that local checkpoints exist).
  """
  version, overwrite = common.version.value, common.overwrite.value
  try:
    prechecks()
    destination = destinations.open_destination(
        common.output_dir.value, base.DestinationOptions(stale_after_s=common.stale_after_s.value))
    destination.check([base.VersionId(m.name, version) for m in models], overwrite)
    destination.remove_stale_staging(print)
  except pipeline.EXPORT_ERRORS as error:
    sys.exit(f"error: {errors.one_line(error)}")

  outcomes = publish_all(models, destination, version, overwrite, checkpoint_for)
  failures = [o for o in outcomes if isinstance(o, Failure)]
  docs_error = None
  if len(failures) < len(outcomes):
    try:
      destination.write_docs(
          base.DocsOptions(common.publisher.value, common.asset_base_url.value), print)
    except pipeline.EXPORT_ERRORS as error:
      docs_error = f"error: writing the docs failed: {errors.one_line(error)}"
  print(summary(outcomes), flush=True)
  if docs_error:
    sys.exit(docs_error)
  if failures:
    sys.exit(failure_line(failures, len(outcomes)))


def parse_models(variants: Sequence[variants_lib.Variant], output_keys: Sequence[str],
                 input_size: Sequence[str],
                 precision: str) -> List[published_models.PublishedModel]:
  """The models for each variant x output at one input size and one precision (a PRECISIONS key),
  in that order.

  Raises:
    ExportError: a bad output key, input size or precision.
  """
  size = published_models.parse_input_size(input_size)
  outputs = [published_models.get_output(key) for key in dict.fromkeys(output_keys)]
  compute = published_models.get_precision(precision)
  return [published_models.PublishedModel(variant, output, size, compute)
          for variant in variants for output in outputs]
