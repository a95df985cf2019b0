"""Sizes that are Python ints when known at trace time and int32 scalar tensors otherwise.

The backbone is traced twice: for a fixed clip shape, where every size is static and all window
bookkeeping is done in Python (no extra ops), and for `[None, 3, None, None, None]`, where the same
code computes the official model's window sizes, shifts and padding from run-time shapes.
"""

from typing import Sequence, Tuple, Union

import tensorflow as tf

Size = Union[int, tf.Tensor]


def sizes(x: tf.Tensor) -> Tuple[Size, ...]:
  """Every axis's size: the static int where known, else a run-time int32 scalar."""
  dynamic = None
  result = []
  for axis, size in enumerate(x.shape):
    if size is None:
      dynamic = tf.shape(x) if dynamic is None else dynamic
      size = dynamic[axis]
    result.append(size)
  return tuple(result)


def reshape_target(x: tf.Tensor) -> list:
  """`sizes(x)` as a `tf.reshape` shape, with -1 for the unknown axis when only one is unknown
  (the batch of a fixed-shape trace), which keeps that graph free of shape ops."""
  if sum(size is None for size in x.shape) == 1:
    return [-1 if size is None else size for size in x.shape]
  return list(sizes(x))


def is_static(values: Sequence[Size]) -> bool:
  """True when every value is a Python int."""
  return all(isinstance(v, int) for v in values)


def may_differ(a: Sequence[Size], b: Sequence[Size]) -> bool:
  """False only when both are known at trace time and equal."""
  return not (is_static(a) and is_static(b) and tuple(a) == tuple(b))


def may_be_nonzero(values: Sequence[Size]) -> bool:
  """False only when every value is a Python 0."""
  return any(not isinstance(v, int) or v != 0 for v in values)
