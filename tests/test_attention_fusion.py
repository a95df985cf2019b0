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


@pytest.fixture(scope="module", params=[tf.float32, tf.bfloat16], ids=["float32", "bfloat16"])
def model(request, tmp_path_factory):
  tf.keras.utils.set_random_seed(0)
  backbone = VideoSwinBackbone(SMALL_ARCH, compute_dtype=request.param)
  path = str(tmp_path_factory.mktemp("fusion") / "model")
  FeatureExtractor(backbone, SIZE).save(path)
  return tf.saved_model.load(path)


def test_every_block_fuses_scale_and_bias_into_its_qk_matmul(model):
  video = tf.constant(np.random.RandomState(0).rand(2, 3, *SIZE).astype(np.float32))

  ops = _ops_run(model.signatures["serving_default"], video)

  blocks = sum(SMALL_ARCH.depths)
  assert ops["_MklFusedBatchMatMulV2", ("Mul", "Add")] == blocks, ops
  # The other matmul of each block (weights times values) stays a plain batch matmul.
  assert sum(n for (op, _), n in ops.items() if "BatchMatMul" in op) == 2 * blocks, ops


def test_run_time_sizes_fuse_too(model):
  # Another clip shape than the fixed signature's, through the any-shape one.
  video = tf.constant(np.random.RandomState(0).rand(1, 3, 6, 40, 48).astype(np.float32))

  ops = _ops_run(model.signatures["serving_dynamic"], video)

  fused = ops["_MklFusedBatchMatMulV2", ("Mul", "Add")]
  plain = sum(n for (op, _), n in ops.items() if "BatchMatMul" in op) - fused
  assert fused >= sum(SMALL_ARCH.depths) and fused == plain, ops
