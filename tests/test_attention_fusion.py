"""The attention's scale and relative-position bias run inside oneDNN's fused BatchMatMul.

TF's remapper rewrites `BatchMatMul -> Mul(scalar) -> Add([heads, 1, N, N])` into one
`_MklFusedBatchMatMulV2`; the attention is laid out so that the pattern matches (see
`hub_models/attention.py`). Counted in the graphs TensorFlow actually runs (after grappler) when a
saved model is called through its serving signature, as users call it.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import context
from tensorflow.python.util import _pywrap_util_port

from conftest import SMALL_ARCH
from video_swin_hub.hub_models.backbone import VideoSwinBackbone
from video_swin_hub.hub_models.hub_module import FeatureExtractor

SIZE = (8, 56, 56)

pytestmark = pytest.mark.skipif(not _pywrap_util_port.IsMklEnabled(),
                                reason="the fusion is oneDNN's (TensorFlow's x86 CPU builds)")


def _ops_run(serving, video) -> collections.Counter:
  """{(op, fused_ops): count} over the optimized graphs of one call of `serving`."""
  context.enable_graph_collection()
  try:
    serving(video=video)
    metadata = context.export_run_metadata()
  finally:
    context.disable_graph_collection()
  ops = collections.Counter()
  for graphs in metadata.function_graphs:
    graph = graphs.post_optimization_graph
    for node in [*graph.node, *(n for f in graph.library.function for n in f.node_def)]:
      fused = tuple(op.decode() for op in node.attr["fused_ops"].list.s)
      ops[node.op, fused] += 1
  return ops


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_every_block_fuses_scale_and_bias_into_its_qk_matmul(tmp_path, dtype):
  tf.keras.utils.set_random_seed(0)
  backbone = VideoSwinBackbone(SMALL_ARCH, compute_dtype=dtype)
  path = str(tmp_path / "model")
  FeatureExtractor(backbone, SIZE).save(path)
  serving = tf.saved_model.load(path).signatures["serving_default"]
  video = tf.constant(np.random.RandomState(0).rand(2, 3, *SIZE).astype(np.float32))

  ops = _ops_run(serving, video)

  blocks = sum(SMALL_ARCH.depths)
  assert ops["_MklFusedBatchMatMulV2", ("Mul", "Add")] == blocks, ops
  # The other matmul of each block (weights times values) stays a plain batch matmul.
  assert sum(n for (op, _), n in ops.items() if "BatchMatMul" in op) == 2 * blocks, ops
