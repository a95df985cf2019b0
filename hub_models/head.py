"""The I3D-style classification head of the official recognisers."""

import tensorflow as tf

from . import layers


class ClassificationHead(tf.Module):
  """Pooled feature `[B, C]` float32 -> dropout (training only) -> logits `[B, K]` float32.

  The matmul computes in `compute_dtype`; the logits are returned as float32 either way.
  """

  def __init__(self, features: int, num_classes: int, dropout_rate: float = 0.5,
               compute_dtype: tf.DType = tf.float32, name=None):
    super().__init__(name=name)
    self.dropout_rate = dropout_rate
    self.fc_cls = layers.Dense(features, num_classes, compute_dtype=compute_dtype, name="fc_cls")

  def __call__(self, pooled: tf.Tensor, training: bool = False) -> tf.Tensor:
    if training and self.dropout_rate:
      pooled = tf.nn.dropout(pooled, rate=self.dropout_rate)
    return tf.cast(self.fc_cls(pooled), tf.float32)
