r"""Serving speed of our exported SavedModels against every peer and the matmul ceiling, in one run.

  python -m benchmarks.serving_speed --repeats=3   # Swin-T and Swin-B, batch 1 and 2 (13 min here)
  python -m benchmarks.serving_speed --variants=swin_tiny_patch244_window877_kinetics400_1k \
      --batch_sizes=1 --repeats=3             # Swin-T batch 1 only (about 3 min)
  python -m benchmarks.serving_speed --batch_sizes=1,8     # on a GPU machine

Times, on the same clips and with the same thread settings (`--threads` intra-op threads, one
inter-op thread, OMP_NUM_THREADS alike), these implementations of one registered architecture:

  ours fp32 / ours bf16: our SavedModel, built through the real export path (a random-weight
    checkpoint in the official layout, `export.savedmodel.build_model`, saved, loaded back) in
    float32 and in bfloat16 precision, called through `signatures["serving_default"]` as users
    call it: float32 RGB in [0, 1], channels first, normalised inside;
  torchvision fp32 / torchvision bf16: torchvision's `SwinTransformer3d` with the same weights,
    eager under `torch.inference_mode()`, in float32 and under
    `torch.autocast(device, dtype=torch.bfloat16)`;
  keras-cv fp32 / keras-cv bf16: keras-cv 0.9's `VideoSwinBackbone` (Keras 3) with the same
    architecture and its own random weights, plus the mean pooling, in a `tf.function`, in float32
    and under the Keras `mixed_bfloat16` policy;
  XLA jit of ours fp32 / bf16 (only when `--implementations` names xla_fp32 or xla_bf16): our
    SavedModel's signature called inside `tf.function(jit_compile=True)`, XLA's kernels instead
    of TensorFlow's (two more models in memory, so not by default);

and TensorFlow's 2048^3 float32 and bfloat16 matmul rates and the compute kernels of one call
(`KernelRunner`, at the model's shapes: the dense layers and the patch embedding's convolution;
per block, the fused `q k^T * scale + bias`, the softmax and the product with v, each one pass
over the attention maps; and the LayerNorms). The peers get their input normalised (keras-cv's
also transposed to channels last) outside the timing, so they do slightly less timed work than
ours. Every implementation (and the matmul and model kernels) runs in its own worker process,
started once: thread pools of several frameworks in one process disturb each other. The parent
drives them over pipes one call at a time, in a rotating order each round, so all see the same
machine state and never run at once.

Prints, per variant and batch size, one row per implementation: seconds per clip (median and min
over `--repeats` rounds), the fraction of the ceiling (the floor for the clip's FLOPs at the matmul
rate of the row's precision, median over rounds, divided by the row's median), the relative error
(Frobenius) of its pooled features against torchvision fp32 on the same clip ("-" for keras-cv,
whose weights are its own), and how many times faster ours fp32 and ours bf16 are than the row
(the row's median over ours). The two ceiling rows give that floor in s/clip, so their ratio
columns are our fraction of the ceiling. The FLOPs are the matmul and convolution FLOPs (2 per
multiply-accumulate) of torchvision's forward at batch 1, counted by
`torch.utils.flop_counter.FlopCounterMode` (Swin-T at 32x224x224: 175.5 GFLOP, Swin-B 562.7, twice the published MACs);
the softmax, LayerNorm and elementwise work is not counted, so the ceiling is a little optimistic.

The two stock-TF bound rows are a floor for any TensorFlow graph of stock kernels: per round, the
sum of the model's compute kernels, each timed at the model's shapes back to back with nothing
between them: every dense layer's matmul with its bias (and fc1's GELU, fused as in the model) and
the patch embedding's Conv3D, the attention kernels (which any such graph must run, writing and
reading the attention maps), and the LayerNorms' normalisation (statistics in the compute dtype, no
affine step). Window partitions, pads, rolls, casts and residual adds are left out, so the real
floor is higher. The lines under the table split the bound into its three parts and give the
largest ratio to each peer that a model at the bound would reach. The kernels' matmul and
convolution FLOPs, all of them and the attention's alone, must equal torch's counts for
torchvision's forward, or the run stops with an error.

An implementation that fails for a variant prints `failed: ...` in its row; the others go on.

glibc malloc: by default (`--malloc=tuned`) every worker starts with large buffers kept in the
heap (MALLOC_MMAP_MAX_=0, a huge trim threshold, a 1 GiB top pad), the settings under which the
previous version of this benchmark found PyTorch fastest here: eager PyTorch frees and reallocates
its activations at every op, and with glibc's defaults each large one is a fresh mmap whose pages
fault in again. TensorFlow keeps its own pool of buffers, so the setting matters little to it; all
workers get the same one so that every peer runs at its best. `--malloc=default` keeps glibc's
defaults (run both to see what the setting is worth on a machine). The tuned heap never shrinks, so
each worker holds on to its peak memory.

On a GPU machine nothing changes: TensorFlow and PyTorch pick the GPU themselves (torch models and
inputs go to `cuda`), float32 runs with TF32 on tensor cores in both (TF's default; set for torch)
and the TF workers allocate GPU memory as they grow, so that all share the device. The timings
include the host-to-device copy of the clip and the copy of the features back, as users pay them.
"""

import contextlib
import dataclasses
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np

from video_swin_hub.export import errors
from video_swin_hub.export import published_models
from video_swin_hub.hub_models import variants as variants_lib

SWIN_T = "swin_tiny_patch244_window877_kinetics400_1k"
SWIN_B = "swin_base_patch244_window877_kinetics400_1k"
# Not registered: the tests' narrow architecture (tests/conftest.py), for smoke runs.
SMOKE_VARIANT = "test_small"


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One timed implementation; `runner` names the worker class below that runs it."""
  key: str
  label: str
  runner: str
  precision: str
  # Whether it has the torchvision reference's weights, so that its features can be compared.
  same_weights: bool
  # Whether `--implementations` names it by default.
  by_default: bool = True


IMPLEMENTATIONS: Dict[str, Implementation] = {
    impl.key: impl for impl in (
        Implementation("ours_fp32", "ours fp32", "OursRunner", "float32", True),
        Implementation("ours_bf16", "ours bf16", "OursRunner", "bfloat16", True),
        Implementation("xla_fp32", "XLA jit of ours fp32", "OursXlaRunner", "float32", True,
                       by_default=False),
        Implementation("xla_bf16", "XLA jit of ours bf16", "OursXlaRunner", "bfloat16", True,
                       by_default=False),
        Implementation("torch_fp32", "torchvision fp32", "TorchRunner", "float32", True),
        Implementation("torch_bf16", "torchvision bf16", "TorchRunner", "bfloat16", True),
        Implementation("kerascv_fp32", "keras-cv fp32", "KerasCvRunner", "float32", False),
        Implementation("kerascv_bf16", "keras-cv bf16", "KerasCvRunner", "bfloat16", False),
    )
}
MATMUL_SIZE = 2048
TUNED_MALLOC = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "MALLOC_TOP_PAD_": "1073741824",
}

_VARIANTS = flags.DEFINE_list("variants", [SWIN_T, SWIN_B],
                               f"Registered variants to time ({SMOKE_VARIANT}: a narrow test one).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "2"], "Batch sizes to time.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds per variant and batch size.",
                                lower_bound=1)
_THREADS = flags.DEFINE_integer("threads", 2, "Intra-op threads of every framework.",
                                lower_bound=1)
_INPUT_SIZE = flags.DEFINE_list("input_size", None, "T,H,W of the clips. Default: 32,224,224.")
_IMPLEMENTATIONS = flags.DEFINE_list(
    "implementations", [key for key, impl in IMPLEMENTATIONS.items() if impl.by_default],
    f"Implementations to time, of {', '.join(IMPLEMENTATIONS)}.")
_MALLOC = flags.DEFINE_enum("malloc", "tuned", ["tuned", "default"],
                            "glibc malloc settings of the worker processes.")


class BenchmarkError(errors.ExportError, ValueError):
  """A bad flag value or a worker that died; the message says which in one line."""


class OursRunner:
  """Our SavedModel's `serving_default`, float32 `[B, 3, T, H, W]` RGB in [0, 1] -> `[B, 8C]`."""

  def __init__(self, precision: str, threads: int):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self.tf = tf
    self.precision = precision
    _tf_threads(tf, threads)

  def device(self) -> str:
    return _tf_device(self.tf)

  def setup(self, variant_name: str, input_size, workdir: str, checkpoint: str) -> None:
    from video_swin_hub.export import savedmodel  # pylint: disable=import-outside-toplevel
    model = published_models.PublishedModel(
        _variant(variant_name), input_size=tuple(input_size),
        precision=published_models.PRECISIONS[self.precision])
    path = os.path.join(workdir, model.name)
    savedmodel.build_model(model, checkpoint).save(path)
    # Held: a signature called from a new tf.function needs its loaded object's variables alive.
    self.loaded = self.tf.saved_model.load(path)
    self.serving = self.loaded.signatures["serving_default"]
    self.output_key = model.output.key

  def prepare(self, clip_path: str) -> np.ndarray:
    self.video = np.load(clip_path)
    return _warm(self.run_once)

  def run_once(self) -> np.ndarray:
    return self.serving(video=self.tf.constant(self.video))[self.output_key].numpy()


class OursXlaRunner(OursRunner):
  """`OursRunner`'s signature called inside `tf.function(jit_compile=True)`, as a user who
  compiles the loaded model with XLA calls it: XLA's own kernels and fusions instead of TF's."""

  def setup(self, variant_name: str, input_size, workdir: str, checkpoint: str) -> None:
    super().setup(variant_name, input_size, workdir, checkpoint)
    serving = self.serving
    self.serving = self.tf.function(lambda video: serving(video=video), jit_compile=True)


class TorchRunner:
  """torchvision's `SwinTransformer3d` eager: normalised `[B, 3, T, H, W]` -> `[B, 8C]` float32."""

  def __init__(self, precision: str, threads: int):
    import torch  # pylint: disable=import-outside-toplevel
    self.torch = torch
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    self.device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if self.device_type == "cuda":
      # TF32 on tensor cores for float32, as TensorFlow does by default.
      torch.backends.cuda.matmul.allow_tf32 = True
      torch.backends.cudnn.allow_tf32 = True
    self.autocast = (torch.autocast(self.device_type, dtype=torch.bfloat16)
                     if precision == "bfloat16" else contextlib.nullcontext())

  def device(self) -> str:
    if self.device_type == "cuda":
      return f"torch cuda ({self.torch.cuda.get_device_name()})"
    return f"torch cpu ({self.torch.get_num_threads()} threads)"

  def setup(self, variant_name: str, input_size, workdir: str, checkpoint: str) -> None:
    del input_size, workdir, checkpoint
    from tests import torch_reference  # pylint: disable=import-outside-toplevel
    variant = _variant(variant_name)
    model = torch_reference.reference_model(variant.architecture, variant.num_classes)
    self.model = model.to(self.device_type)

  def prepare(self, clip_path: str) -> np.ndarray:
    from tests import conftest  # pylint: disable=import-outside-toplevel
    self.video = conftest.normalise(np.load(clip_path))
    return _warm(self.run_once)

  def run_once(self) -> np.ndarray:
    model = self.model
    with self.torch.inference_mode(), self.autocast:
      x = self.torch.from_numpy(self.video).to(self.device_type)
      pooled = model.norm(model.features(model.patch_embed(x))).mean(dim=(1, 2, 3))
    return pooled.float().cpu().numpy()


class KerasCvRunner:
  """keras-cv's `VideoSwinBackbone` + mean pooling in a tf.function: normalised channels-last
  `[B, T, H, W, 3]` -> `[B, 8C]` float32."""

  def __init__(self, precision: str, threads: int):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel
    self.tf, self.keras = tf, keras
    _tf_threads(tf, threads)
    if precision == "bfloat16":
      keras.mixed_precision.set_global_policy("mixed_bfloat16")

  def device(self) -> str:
    return _tf_device(self.tf)

  def setup(self, variant_name: str, input_size, workdir: str, checkpoint: str) -> None:
    del workdir, checkpoint
    import keras_cv  # pylint: disable=import-outside-toplevel
    arch = _variant(variant_name).architecture
    self.keras.utils.set_random_seed(0)
    backbone = keras_cv.models.VideoSwinBackbone(
        input_shape=(*input_size, 3), include_rescaling=False, embed_dim=arch.embed_dim,
        patch_size=list(arch.patch_size), window_size=list(arch.window_size),
        mlp_ratio=arch.mlp_ratio, depths=list(arch.depths), num_heads=list(arch.num_heads))
    tf = self.tf

    @tf.function
    def forward(video):
      return tf.cast(tf.reduce_mean(backbone(video, training=False), axis=[1, 2, 3]), tf.float32)

    self.forward = forward

  def prepare(self, clip_path: str) -> np.ndarray:
    from tests import conftest  # pylint: disable=import-outside-toplevel
    self.video = np.ascontiguousarray(conftest.normalise(np.load(clip_path)).transpose(0, 2, 3, 4, 1))
    return _warm(self.run_once)

  def run_once(self) -> np.ndarray:
    return self.forward(self.tf.constant(self.video)).numpy()


class MatmulRunner:
  """TensorFlow's MATMUL_SIZE^3 matmul in float32 and bfloat16: `run` gives GFLOP/s of each."""

  def __init__(self, precision: str, threads: int):
    del precision
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self.tf = tf
    _tf_threads(tf, threads)
    a, b = np.random.RandomState(0).rand(2, MATMUL_SIZE, MATMUL_SIZE).astype(np.float32)
    self.operands = {"float32": (tf.constant(a), tf.constant(b)),
                     "bfloat16": (tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16))}
    # Enough matmuls per measurement to take 0.2 s (one on a CPU, thousands on a GPU).
    self.counts = {dtype: self._calibrate(dtype) for dtype in self.operands}

  def device(self) -> str:
    return _tf_device(self.tf)

  def _matmuls(self, dtype: str, count: int) -> float:
    a, b = self.operands[dtype]
    start = time.perf_counter()
    for _ in range(count):
      c = self.tf.linalg.matmul(a, b)
    c[0, 0].numpy()  # waits for the device
    return time.perf_counter() - start

  def _calibrate(self, dtype: str) -> int:
    count = 1
    self._matmuls(dtype, 1)
    while self._matmuls(dtype, count) < 0.2:
      count *= 2
    return count

  def run(self) -> Dict[str, float]:
    flops = 2.0 * MATMUL_SIZE ** 3
    return {dtype: flops * count / self._matmuls(dtype, count) / 1e9
            for dtype, count in self.counts.items()}


class KernelRunner:
  """The compute kernels of one model call, in float32 and bfloat16, each at the model's shapes
  and as stock TensorFlow runs it, back to back with nothing between them (no window partitions,
  pads, rolls, casts or residual adds). `run` times three parts:

    dense: every Dense layer's matmul with its bias (and the GELU, fused into fc1 as in the model),
      the patch mergings' reductions and the patch embedding's Conv3D;
    attention: per block `softmax(q k^T * scale + bias) v` over head-major `[heads, B * nW, N, d]`
      (on a CPU one oneDNN matmul with the scale and bias fused, a softmax and a matmul: each one
      pass over the `[heads, B * nW, N, N]` maps, the fewest any graph of stock ops can make);
    layernorm: every LayerNorm's normalisation in the compute dtype, without the affine step
      (which a graph could fold into the next dense layer): less work than any LayerNorm that
      keeps float32 statistics.

  The shift mask's extra columns are left out too, so every part is a little less than the
  model's work. `prepare` gives the (all, attention) matmul and convolution FLOPs per clip, which
  the caller checks against torch's counts; `run` gives {dtype: {part: seconds per call}}.
  """

  PARTS = ("dense", "attention", "layernorm")

  def __init__(self, precision: str, threads: int):
    del precision
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self.tf = tf
    _tf_threads(tf, threads)
    self.calls = {}

  def device(self) -> str:
    return _tf_device(self.tf)

  def prepare(self, variant_name: str, input_size, batch: int) -> Tuple[float, float]:
    tf = self.tf
    arch = _variant(variant_name).architecture
    plan = _kernel_plan(arch, input_size, batch)
    rng = np.random.RandomState(0)
    for dtype in ("float32", "bfloat16"):
      def tensor(shape, dtype=dtype):
        return tf.cast(rng.standard_normal(shape) * 0.1, dtype)
      self.calls[dtype] = {
          "dense": self._dense(plan, tensor),
          "attention": self._attention(plan, tensor),
          "layernorm": self._layernorm(plan, tensor, arch.layer_norm_epsilon),
      }
      for call in self.calls[dtype].values():
        call()
    return _kernel_flops(plan, batch)

  def _dense(self, plan, tensor):
    tf = self.tf
    embed_input = tensor(plan.embed_input)
    embed_kernel, embed_bias = tensor(plan.embed_kernel), tensor(plan.embed_kernel[-1:])
    # One set of weights per stage: each block gets another input (the last block's output), so
    # no two blocks are the same computation (grappler would merge them).
    stages = []
    for s in plan.stages:
      c, h = s.features, s.hidden
      stages.append((s, tensor([s.padded, c]), tensor([s.grid, c]),
                     [(tensor(shape), tensor(shape[-1:]))
                      for shape in ([c, 3 * c], [c, c], [c, h], [h, c])],
                     (tensor([s.merged, 4 * c]), tensor([4 * c, 2 * c])) if s.merged else None))

    @tf.function(autograph=False)
    def dense():
      total = [tf.nn.bias_add(tf.nn.conv3d(embed_input, embed_kernel, [1, *plan.patch, 1],
                                           "VALID"), embed_bias)[0, 0, 0, 0, 0]]
      for s, windows, tokens, weights, merge in stages:
        (qkv, qkv_b), (proj, proj_b), (fc1, fc1_b), (fc2, fc2_b) = weights
        for _ in range(s.depth):
          total.append(tf.nn.bias_add(tf.matmul(windows, qkv), qkv_b)[0, 0])
          windows = tf.nn.bias_add(tf.matmul(windows, proj), proj_b)
          hidden = tf.nn.gelu(tf.nn.bias_add(tf.matmul(tokens, fc1), fc1_b), approximate=False)
          tokens = tf.nn.bias_add(tf.matmul(hidden, fc2), fc2_b)
        total += [windows[0, 0], tokens[0, 0]]
        if merge is not None:
          total.append(tf.matmul(*merge)[0, 0])
      return tf.add_n([tf.cast(t, tf.float32) for t in total])

    return dense

  def _attention(self, plan, tensor):
    tf = self.tf
    operands = []
    for s in plan.stages:
      q, k, v = (tensor([s.heads, s.windows, s.tokens, s.head_dim]) for _ in range(3))
      bias = tensor([s.heads, 1, s.tokens, s.tokens])
      operands.append((q, k, v, bias, tf.cast(s.head_dim ** -0.5, q.dtype), s.depth))

    @tf.function(autograph=False)
    def attention():
      total = []
      for q, k, v, bias, scale, depth in operands:
        # Each block attends with the last one's output, so that no two blocks are the same.
        for _ in range(depth):
          q = tf.matmul(tf.nn.softmax(tf.matmul(q, k, transpose_b=True) * scale + bias), v)
        total.append(tf.cast(q[0, 0, 0, 0], tf.float32))
      return tf.add_n(total)

    return attention

  def _layernorm(self, plan, tensor, epsilon: float):
    tf = self.tf
    inputs = [(tensor(shape), count) for shape, count in plan.norms]

    @tf.function(autograph=False)
    def layernorm():
      total = []
      for x, count in inputs:
        for _ in range(count):
          mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
          x = (x - mean) * tf.math.rsqrt(variance + epsilon)
        total.append(tf.cast(x[0, 0], tf.float32))
      return tf.add_n(total)

    return layernorm

  def run(self) -> Dict[str, Dict[str, float]]:
    seconds = {}
    for dtype, calls in self.calls.items():
      seconds[dtype] = {}
      for part, call in calls.items():
        start = time.perf_counter()
        call().numpy()
        seconds[dtype][part] = time.perf_counter() - start
    return seconds


@dataclasses.dataclass(frozen=True)
class StageKernels:
  """One stage's kernel shapes: `grid` tokens (B * D * H * W) of `features` channels, `padded`
  tokens (the grid padded to whole windows, where qkv and proj run) in `windows` windows (B * nW)
  of `tokens` (N), `heads` of `head_dim`, the MLP's `hidden` width, `depth` blocks and `merged`
  tokens after the patch merging that ends the stage (0 for the last stage)."""
  grid: int
  padded: int
  features: int
  heads: int
  windows: int
  tokens: int
  head_dim: int
  hidden: int
  depth: int
  merged: int


@dataclasses.dataclass(frozen=True)
class KernelPlan:
  """The kernel shapes of one model call: the patch embedding's padded input, Conv3D kernel and
  output (channels last), the stages, and each LayerNorm input shape with how many norms it has."""
  patch: Tuple[int, int, int]
  embed_input: Tuple[int, ...]
  embed_kernel: Tuple[int, ...]
  embed_output: Tuple[int, ...]
  stages: Tuple[StageKernels, ...]
  norms: Tuple[Tuple[Tuple[int, int], int], ...]


def _kernel_flops(plan: KernelPlan, batch: int) -> Tuple[float, float]:
  """(all, attention) matmul and convolution FLOPs per clip of `plan`'s kernels (2 per
  multiply-accumulate, as torch counts)."""
  attention = sum(4.0 * s.windows * s.heads * s.tokens ** 2 * s.head_dim * s.depth
                  for s in plan.stages)
  dense = 2.0 * np.prod(plan.embed_output[:-1]) * plan.embed_output[-1] * np.prod(
      plan.embed_kernel[:-1])
  for s in plan.stages:
    # qkv and proj (3C + C outputs) over the padded windows; fc1 and fc2 over the grid's tokens.
    dense += 2.0 * s.depth * (s.padded * s.features * 4 * s.features +
                              s.grid * s.features * s.hidden * 2)
    dense += 2.0 * s.merged * 4 * s.features * 2 * s.features
  return (dense + attention) / batch, attention / batch


def _kernel_plan(arch, input_size, batch: int) -> KernelPlan:
  """The kernel shapes for `batch` clips of `input_size`, windows shrunk and grids padded as the
  model does."""
  from video_swin_hub.hub_models import windows  # pylint: disable=import-outside-toplevel
  grid = [-(-size // patch) for size, patch in zip(input_size, arch.patch_size)]
  embed_output = (batch, *grid, arch.embed_dim)
  norms = [((batch * int(np.prod(grid)), arch.embed_dim), 1)]
  stages = []
  for i, (depth, heads) in enumerate(zip(arch.depths, arch.num_heads)):
    features = arch.embed_dim * 2**i
    window, _ = windows.effective_window(grid, arch.window_size,
                                         [w // 2 for w in arch.window_size])
    padded = windows.padded_grid(grid, window)
    grid_tokens = batch * int(np.prod(grid))
    merged = 0
    norms.append(((grid_tokens, features), 2 * depth))
    if i < len(arch.depths) - 1:
      grid = [grid[0], -(-grid[1] // 2), -(-grid[2] // 2)]
      merged = batch * int(np.prod(grid))
      norms.append(((merged, 4 * features), 1))
    stages.append(StageKernels(
        grid=grid_tokens, padded=batch * int(np.prod(padded)), features=features, heads=heads,
        windows=batch * int(np.prod([p // w for p, w in zip(padded, window)])),
        tokens=int(np.prod(window)), head_dim=features // heads,
        hidden=int(features * arch.mlp_ratio), depth=depth, merged=merged))
  norms.append(((stages[-1].grid, stages[-1].features), 1))
  return KernelPlan(
      patch=tuple(arch.patch_size),
      embed_input=(batch, *[g * p for g, p in zip(embed_output[1:4], arch.patch_size)], 3),
      embed_kernel=(*arch.patch_size, 3, arch.embed_dim),
      embed_output=embed_output, stages=tuple(stages), norms=tuple(norms))


def _variant(name: str) -> variants_lib.Variant:
  """The registered variant `name`, or the tests' narrow one for SMOKE_VARIANT."""
  if name == SMOKE_VARIANT:
    from tests import conftest  # pylint: disable=import-outside-toplevel
    return conftest.small_variant()
  return variants_lib.get(name)


def _tf_threads(tf, threads: int) -> None:
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  # oneDNN matmuls use a single thread when TF runs ops concurrently; one op at a time keeps them
  # on all intra-op threads.
  tf.config.threading.set_inter_op_parallelism_threads(1)


def _tf_device(tf) -> str:
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    return f"TF {gpus[0].name} ({tf.config.experimental.get_device_details(gpus[0]).get('device_name', '?')})"
  return f"TF cpu ({tf.config.threading.get_intra_op_parallelism_threads()} threads)"


def _warm(run_once) -> np.ndarray:
  """Runs twice untimed (the first call traces and allocates); returns the features."""
  run_once()
  return run_once()


def _worker(runner_name: str, precision: str, threads: int, connection) -> None:
  """A worker process: builds its runner, then answers (method, args) messages with
  ("ok", result) or ("error", one line) until it gets None. `time` runs once and gives seconds."""
  try:
    runner = globals()[runner_name](precision, threads)
    connection.send(("ok", None))
  except Exception as error:  # pylint: disable=broad-except
    connection.send(("error", f"{type(error).__name__}: {errors.one_line(error)}"))
    return
  while True:
    message = connection.recv()
    if message is None:
      return
    method, args = message
    try:
      if method == "time":
        start = time.perf_counter()
        runner.run_once()
        result = time.perf_counter() - start
      else:
        result = getattr(runner, method)(*args)
      connection.send(("ok", result))
    except Exception as error:  # pylint: disable=broad-except
      connection.send(("error", f"{type(error).__name__}: {errors.one_line(error)}"))


class Worker:
  """The parent's handle on one worker process."""

  def __init__(self, name: str, runner: str, precision: str, env: Dict[str, str]):
    self.name = name
    context = multiprocessing.get_context("spawn")
    self.connection, child = context.Pipe()
    self.process = context.Process(target=_worker, args=(runner, precision, _THREADS.value, child),
                                   name=name, daemon=True)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # a spawned child starts with the parent's environment at start()
    try:
      self.process.start()
    finally:
      os.environ.clear()
      os.environ.update(saved)
    child.close()

  def send(self, method: str, *args) -> None:
    try:
      self.connection.send((method, args))
    except OSError:
      raise BenchmarkError(f"{self.name}: worker process is gone") from None

  def receive(self):
    """The result of the last call; raises BenchmarkError if it failed or the process died."""
    try:
      status, result = self.connection.recv()
    except EOFError:
      self.process.join(5)
      raise BenchmarkError(
          f"{self.name}: worker process died (exit code {self.process.exitcode})") from None
    if status == "error":
      raise BenchmarkError(f"{self.name}: {result}")
    return result

  def call(self, method: str, *args):
    self.send(method, *args)
    return self.receive()

  def stop(self) -> None:
    with contextlib.suppress(OSError):
      self.connection.send(None)
    self.process.join(30)
    if self.process.is_alive():
      self.process.kill()


def _worker_env(keras3: bool) -> Dict[str, str]:
  env = dict(os.environ)
  for key in TUNED_MALLOC:
    env.pop(key, None)
  if _MALLOC.value == "tuned":
    env.update(TUNED_MALLOC)
  env["OMP_NUM_THREADS"] = str(_THREADS.value)
  env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"  # TF workers share one GPU
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if keras3:
    env.pop("TF_USE_LEGACY_KERAS", None)  # keras-cv 0.9 needs Keras 3
    env["KERAS_BACKEND"] = "tensorflow"
  else:
    env["TF_USE_LEGACY_KERAS"] = "1"  # as the export tools run
  return env


def _parse_flags():
  """(variants, batch sizes, input size, implementations) from the flags; BenchmarkError if bad."""
  chosen = [_variant(name) for name in _VARIANTS.value]
  try:
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
  except ValueError:
    raise BenchmarkError(f"--batch_sizes must be integers; got {_BATCH_SIZES.value}") from None
  if not batch_sizes or min(batch_sizes) < 1:
    raise BenchmarkError(f"--batch_sizes must be positive integers; got {_BATCH_SIZES.value}")
  input_size = published_models.DEFAULT_INPUT_SIZE
  if _INPUT_SIZE.value:
    input_size = published_models.parse_input_size(_INPUT_SIZE.value)
  unknown = [key for key in _IMPLEMENTATIONS.value if key not in IMPLEMENTATIONS]
  if unknown or not _IMPLEMENTATIONS.value:
    raise BenchmarkError(f"unknown implementations {unknown}; valid ones: "
                         f"{', '.join(IMPLEMENTATIONS)}")
  implementations = [IMPLEMENTATIONS[key] for key in _IMPLEMENTATIONS.value]
  return chosen, batch_sizes, input_size, implementations


def _flops_per_clip(model, input_size) -> Tuple[float, float]:
  """(all, attention) matmul and convolution FLOPs of torchvision's forward for one clip, counted
  by torch; the attention's are its batched matmuls (q k^T and the weights times v).

  Moves `model` to the meta device: shapes alone give the count, without computing anything.
  """
  import torch  # pylint: disable=import-outside-toplevel
  from torch.utils import flop_counter  # pylint: disable=import-outside-toplevel
  model = model.to("meta")
  counter = flop_counter.FlopCounterMode(display=False)
  with torch.inference_mode(), counter:
    model.norm(model.features(model.patch_embed(torch.zeros(1, 3, *input_size, device="meta"))))
  attention = counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0)
  return float(counter.get_total_flops()), float(attention)


@dataclasses.dataclass
class Row:
  """One printed row: seconds per clip over the rounds, or why it has none."""
  label: str
  precision: str
  seconds: List[float] = dataclasses.field(default_factory=list)
  error: Optional[float] = None
  failure: Optional[str] = None

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)


def _measure(workers: Dict[str, Worker], active: Sequence[str], rows: Dict[str, Row],
             rates: Dict[str, List[float]], kernels: Dict[str, List[Dict[str, float]]],
             repeats: int) -> None:
  """Rounds of one call per active worker, in a rotating order, then one matmul measurement and
  one call of each part of the model's kernels."""
  for round_index in range(repeats):
    shift = round_index % len(active)
    for key in list(active[shift:]) + list(active[:shift]):
      if rows[key].failure:
        continue
      try:
        rows[key].seconds.append(workers[key].call("time"))
      except BenchmarkError as error:
        rows[key].failure = errors.one_line(error)
    for dtype, rate in workers["matmul"].call("run").items():
      rates[dtype].append(rate)
    for dtype, parts in workers["kernels"].call("run").items():
      kernels[dtype].append(parts)


def _print_table(title: str, rows: Sequence[Row], rates: Dict[str, List[float]],
                 kernels: Dict[str, List[Dict[str, float]]], flops: Tuple[float, float],
                 batch: int) -> None:
  total, attention_flops = flops
  ceiling = {dtype: Row(f"ceiling {dtype} ({statistics.median(r):.0f} GFLOP/s)", dtype,
                        [total / (rate * 1e9) for rate in r]) for dtype, r in rates.items()}
  # Per round: the sum of that round's kernel parts, per clip.
  bound = {dtype: Row(f"stock-TF bound {dtype}", dtype,
                      [sum(parts.values()) / batch for parts in rounds])
           for dtype, rounds in kernels.items()}
  ours = {row.precision: row for row in rows
          if row.label.startswith("ours") and row.seconds}
  print(f"\n== {title}, batch {batch}: {total / 1e9:.4g} GFLOP per clip, "
        f"{attention_flops / 1e9:.4g} of them in the attention")
  header = f"{'implementation':38s}{'s/clip median':>14s}{'min':>9s}{'of ceiling':>12s}" \
           f"{'error vs torch fp32':>21s}"
  for precision in ours:
    header += f"{'ours ' + ('fp32' if precision == 'float32' else 'bf16') + ' faster':>18s}"
  print(header)
  for row in [*rows, *ceiling.values(), *bound.values()]:
    if row.failure or not row.seconds:
      print(f"{row.label:38s}  failed: {row.failure}")
      continue
    fraction = ceiling[row.precision].median / row.median
    error = f"{row.error:.1e}" if row.error is not None else "-"
    line = (f"{row.label:38s}{row.median:14.3f}{min(row.seconds):9.3f}{fraction:11.1%} "
            f"{error:>21s}")
    for ours_row in ours.values():
      line += f"{row.median / ours_row.median:17.2f}x"
    print(line, flush=True)
  for dtype, rounds in kernels.items():
    part = {name: statistics.median(parts[name] for parts in rounds) / batch
            for name in KernelRunner.PARTS}
    # Three significant digits: a small model's LayerNorms take well under a millisecond.
    print(f"stock-TF bound {dtype} (medians): {part['dense']:.3g} s of matmuls and convolution "
          f"+ {part['attention']:.3g} s of attention kernels + {part['layernorm']:.3g} s of "
          f"LayerNorms", flush=True)
  for peer in rows:
    if peer.label.startswith("ours") or peer.failure or not peer.seconds:
      continue
    best = ", ".join(f"{peer.median / row.median:.2f}x in {dtype}" for dtype, row in bound.items())
    print(f"with stock TF kernels at best {best} faster than {peer.label}", flush=True)


def _call_all(workers: Dict[str, Worker], rows: Dict[str, Row], method: str, *args) -> dict:
  """Calls `method` on the workers of the rows that have not failed, all at once (setting up and
  warming need not be timed alone); a failure is recorded in its row. Returns {key: result}."""
  keys = [key for key, row in rows.items() if not row.failure]
  for key in keys:
    workers[key].send(method, *args)
  results = {}
  for key in keys:
    try:
      results[key] = workers[key].receive()
    except BenchmarkError as error:
      rows[key].failure = errors.one_line(error)
  return results


def _reference_checkpoints(chosen, input_size, workdir: str) -> Dict[str, tuple]:
  """{variant name: (official-layout checkpoint path, FLOPs per clip)} of the torchvision reference
  models (seed 0, as the torch workers build them)."""
  from tests import torch_reference  # pylint: disable=import-outside-toplevel
  out = {}
  for variant in chosen:
    reference = torch_reference.reference_model(variant.architecture, variant.num_classes)
    checkpoint = os.path.join(workdir, f"{variant.name}.pth")
    torch_reference.save_official(reference, checkpoint)
    out[variant.name] = checkpoint, _flops_per_clip(reference, input_size)
  return out


def _run(workdir: str) -> None:
  chosen, batch_sizes, input_size, implementations = _parse_flags()
  workers: Dict[str, Worker] = {}
  try:
    for impl in implementations:
      workers[impl.key] = Worker(impl.key, impl.runner, impl.precision,
                                 _worker_env(keras3=impl.runner == "KerasCvRunner"))
    workers["matmul"] = Worker("matmul", "MatmulRunner", "float32", _worker_env(keras3=False))
    workers["kernels"] = Worker("kernels", "KernelRunner", "float32", _worker_env(keras3=False))
    # Made while the workers import their frameworks.
    references = _reference_checkpoints(chosen, input_size, workdir)
    started = {impl.key: Row(impl.label, impl.precision) for impl in implementations}
    for key, row in started.items():
      try:
        workers[key].receive()
      except BenchmarkError as error:
        row.failure = errors.one_line(error)
    workers["matmul"].receive()
    workers["kernels"].receive()
    devices = sorted(set(_call_all(workers, started, "device").values()) |
                     {workers["matmul"].call("device")})
    print(f"{_THREADS.value} threads, malloc {_MALLOC.value}, clips "
          f"{'x'.join(map(str, input_size))}, devices: {'; '.join(devices)}", flush=True)

    for variant in chosen:
      checkpoint, flops = references[variant.name]
      rows = {key: dataclasses.replace(row) for key, row in started.items()}
      _call_all(workers, rows, "setup", variant.name, input_size, workdir, checkpoint)
      for batch in batch_sizes:
        clip_path = os.path.join(workdir, f"clip_{batch}.npy")
        np.save(clip_path,
                np.random.RandomState(batch).rand(batch, 3, *input_size).astype(np.float32))
        batch_rows = {key: dataclasses.replace(row, seconds=[]) for key, row in rows.items()}
        features = _call_all(workers, batch_rows, "prepare", clip_path)
        if "torch_fp32" in features:
          want = features["torch_fp32"]
          for key, got in features.items():
            if IMPLEMENTATIONS[key].same_weights:
              batch_rows[key].error = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        kernel_flops = workers["kernels"].call("prepare", variant.name, input_size, batch)
        for what, ours, torchs in zip(("all the matmuls and convolutions", "the attention"),
                                      kernel_flops, flops):
          if abs(ours - torchs) > 1e-6 * torchs:
            raise BenchmarkError(
                f"{variant.name}: the kernels' shapes give {ours:.6g} FLOPs per clip in "
                f"{what}, torchvision's forward {torchs:.6g}")
        rates = {"float32": [], "bfloat16": []}
        kernels = {"float32": [], "bfloat16": []}
        _measure(workers, list(batch_rows), batch_rows, rates, kernels, _REPEATS.value)
        for row in batch_rows.values():
          row.seconds = [s / batch for s in row.seconds]
        _print_table(variant.name, list(batch_rows.values()), rates, kernels, flops, batch)
  finally:
    for worker in workers.values():
      worker.stop()


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    with tempfile.TemporaryDirectory() as workdir:
      _run(workdir)
  except (BenchmarkError, errors.ExportError, variants_lib.UnknownVariantError) as error:
    sys.exit(f"error: {errors.one_line(error)}")


if __name__ == "__main__":
  app.run(main)
