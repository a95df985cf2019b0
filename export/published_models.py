"""What one published Hub model is: a registry variant, the output it returns, the precision it
computes in and its input size.

Each variant can be published with one of three outputs and one of two precisions (presets as data,
below); each choice is its own Hub model with its own name and docs. The default, the pooled
feature computed in float32 at 32x224x224, keeps the variant's own name; other outputs, precisions
and input sizes add a suffix, so handles never collide.
"""

import dataclasses
from typing import Any, Callable, Dict, Sequence, Tuple

from . import errors
from ..hub_models import variants as variants_lib


@dataclasses.dataclass(frozen=True)
class Output:
  """One kind of exported output.

  Attributes:
    key: the flag value and the serving signature's output name.
    name_suffix: appended to the variant name to name the Hub model.
    task: the tfhub.dev task id of models with this output.
    module: the `hub_models.hub_module` class of the SavedModel root (named, so that this registry
      does not import TensorFlow).
    keeps_head: whether the official classification head is part of the model.
    summary: what the model returns, for one-line descriptions.
    shape: the output shape without the batch axis, from (variant, (T', H', W') of the final map).
  """
  key: str
  name_suffix: str
  task: str
  module: str
  keeps_head: bool
  summary: str
  shape: Callable[[variants_lib.Variant, Tuple[int, int, int]], Tuple[int, ...]]


OUTPUTS: Dict[str, Output] = {
    output.key: output for output in (
        Output("features", "", "video-feature-extraction",
               "FeatureExtractor",
               keeps_head=False, summary="pooled video feature",
               shape=lambda variant, _: (variant.architecture.num_features,)),
        Output("logits", "_classification", "video-classification",
               "Classifier",
               keeps_head=True, summary="classification logits",
               shape=lambda variant, _: (variant.num_classes,)),
        Output("feature_map", "_feature_map", "video-feature-extraction",
               "FeatureMapExtractor",
               keeps_head=False, summary="final feature map",
               shape=lambda variant, size: (variant.architecture.num_features, *size)),
    )
}
DEFAULT_OUTPUT = "features"
DEFAULT_INPUT_SIZE = variants_lib.DEFAULT_INPUT_SIZE


@dataclasses.dataclass(frozen=True)
class Precision:
  """What an exported model computes in. Its variables and its input and output are float32 in
  every precision.

  Attributes:
    key: the flag value, recorded in the manifest's identity.
    name_suffix: appended after the output's suffix to name the Hub model.
    compute_dtype: the TF dtype name of the matmuls, attention and MLP (`tf.as_dtype` takes it;
      named, so that this registry does not import TensorFlow).
    summary: what the model computes in, for docs.
  """
  key: str
  name_suffix: str
  compute_dtype: str
  summary: str


PRECISIONS: Dict[str, Precision] = {
    precision.key: precision for precision in (
        Precision("float32", "", "float32", "computes in float32"),
        Precision("bfloat16", "_bf16", "bfloat16",
                  "computes its matmuls, attention and MLP in bfloat16 (LayerNorm statistics, "
                  "the residual stream and the pooling in float32)"),
    )
}
DEFAULT_PRECISION = "float32"


class UnknownOutputError(errors.ExportError, ValueError):
  """An output kind that is not in OUTPUTS; the message lists the valid ones."""


def get_output(key: str) -> Output:
  if key not in OUTPUTS:
    raise UnknownOutputError(f"unknown output {key!r}; valid outputs: {', '.join(OUTPUTS)}")
  return OUTPUTS[key]


class UnknownPrecisionError(errors.ExportError, ValueError):
  """A precision that is not in PRECISIONS; the message lists the valid ones."""


def get_precision(key: str) -> Precision:
  if key not in PRECISIONS:
    raise UnknownPrecisionError(
        f"unknown precision {key!r}; valid precisions: {', '.join(PRECISIONS)}")
  return PRECISIONS[key]


class InputSizeError(errors.ExportError, ValueError):
  """An input size that is not three positive integers."""


def parse_input_size(values: Sequence[str]) -> Tuple[int, int, int]:
  """Frames, height, width from three strings of positive integers.

  Raises:
    InputSizeError: naming what is wrong.
  """
  if len(values) != 3:
    raise InputSizeError(f"input size needs frames,height,width; got {','.join(values)!r}")
  try:
    size = tuple(int(v) for v in values)
  except ValueError:
    raise InputSizeError(f"input size must be integers; got {','.join(values)!r}") from None
  if min(size) < 1:
    raise InputSizeError(f"input size must be positive; got {size}")
  return size


@dataclasses.dataclass(frozen=True)
class PublishedModel:
  """A variant exported with one output at one input size, computing in one precision."""
  variant: variants_lib.Variant
  output: Output = OUTPUTS[DEFAULT_OUTPUT]
  input_size: Tuple[int, int, int] = DEFAULT_INPUT_SIZE
  precision: Precision = PRECISIONS[DEFAULT_PRECISION]

  @property
  def name(self) -> str:
    """The Hub model name: the variant's, plus the output's suffix, plus the precision's suffix,
    plus `_TxHxW` when the input size is not the default."""
    size = ""
    if tuple(self.input_size) != DEFAULT_INPUT_SIZE:
      size = "_" + "x".join(str(s) for s in self.input_size)
    return f"{self.variant.name}{self.output.name_suffix}{self.precision.name_suffix}{size}"

  @property
  def input_shape(self) -> Tuple[int, ...]:
    """The input without its batch axis: (3, T, H, W)."""
    return (3, *self.input_size)

  @property
  def feature_map_size(self) -> Tuple[int, int, int]:
    """T', H', W' of the final map: the patch embedding divides each axis by the patch size (with
    padding, so rounding up) and each of the patch mergings halves H and W (again rounding up)."""
    arch = self.variant.architecture
    frames, height, width = (-(-s // p) for s, p in zip(self.input_size, arch.patch_size))
    for _ in range(len(arch.depths) - 1):
      height, width = -(-height // 2), -(-width // 2)
    return frames, height, width

  @property
  def output_shape(self) -> Tuple[int, ...]:
    """The output without its batch axis."""
    return self.output.shape(self.variant, self.feature_map_size)


class IdentityError(errors.ExportError, ValueError):
  """A manifest's identity record that does not name a registered model."""


# How each field of PublishedModel is written to a manifest's "identity" and read back. A new
# field of the identity is one more entry here.
_IDENTITY_CODECS: Dict[str, Tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "variant": (lambda variant: variant.name, variants_lib.get),
    "output": (lambda output: output.key, get_output),
    "input_size": (list, lambda values: tuple(int(v) for v in values)),
    "precision": (lambda precision: precision.key, get_precision),
}
# What a record written before a field existed meant by leaving it out.
_IDENTITY_DEFAULTS: Dict[str, Any] = {"precision": DEFAULT_PRECISION}


def identity(model: PublishedModel) -> Dict[str, Any]:
  """The JSON-ready fields that make `model` what it is (variant, output, input size,
  precision)."""
  return {field: encode(getattr(model, field))
          for field, (encode, _) in _IDENTITY_CODECS.items()}


def from_identity(record: Dict[str, Any]) -> PublishedModel:
  """The PublishedModel an `identity(...)` record describes; a record without "precision" (written
  before models had one) is a float32 model.

  Raises:
    IdentityError: a field is missing or names nothing registered.
  """
  try:
    record = {**_IDENTITY_DEFAULTS, **record}
    return PublishedModel(**{field: decode(record[field])
                             for field, (_, decode) in _IDENTITY_CODECS.items()})
  except (KeyError, TypeError, ValueError) as error:
    raise IdentityError(f"identity {record!r} names no registered model: {error}") from None
