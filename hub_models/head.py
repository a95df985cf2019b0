"""The I3D-style classification head of the official recognisers."""

import tensorflow as tf

from . import layers


class ClassificationHead(tf.Module):
  """Pooled feature `[B, C]` -> dropout (training only) -> logits `[B, K]` float32."""

  def __init__(self, features: int, num_classes: int, dropout_rate: float = 0.5, name=None):
    super().__init__(name=name)
    self.dropout_rate = dropout_rate
    self.fc_cls = layers.Dense(features, num_classes, name="fc_cls")

  def __call__(self, pooled: tf.Tensor, training: bool = False) -> tf.Tensor:
    if training and self.dropout_rate:
      pooled = tf.nn.dropout(pooled, rate=self.dropout_rate)
    return self.fc_cls(pooled)
