r"""Serving speed of our exported SavedModel against torchvision, measured in one process.

  python -m benchmarks.serving_speed            # both malloc settings, one child process each
  python -m benchmarks.serving_speed --malloc=default --batch_sizes=1

Converts a random-weight Swin-T (official checkpoint layout, through the real conversion path) and
saves it as the export does, then times, alternating in the same process, our SavedModel's
`serving_default` signature, its root `__call__` (what hub.KerasLayer calls; it switches to the
fixed-shape graph at run time) and torchvision's eager fp32 `SwinTransformer3d` forward on the same
32x224x224 clips, and prints seconds per clip, clips/s and the speed ratio (torchvision time / our
serving_default time) for each batch size.

glibc's malloc settings only take effect when a process starts, so `--malloc=both` (the default)
runs itself twice: once with the default allocator and once with the tuned settings under which
PyTorch is fastest here (large buffers kept in the heap).
"""

import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_MALLOC = flags.DEFINE_enum("malloc", "both", ["both", "default", "tuned"],
                            "glibc malloc settings for the measuring process.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "2"], "Batch sizes to time.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per batch size and implementation.")
_THREADS = flags.DEFINE_integer("threads", 2, "Threads for both frameworks.")
_VARIANT = flags.DEFINE_string("variant", "swin_tiny_patch244_window877_kinetics400_1k",
                               "Registered variant whose architecture is timed.")

TUNED_MALLOC = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "MALLOC_TOP_PAD_": "1073741824",
}


def _run_children(argv):
  for setting in ("default", "tuned"):
    env = dict(os.environ)
    for key in TUNED_MALLOC:
      env.pop(key, None)
    if setting == "tuned":
      env.update(TUNED_MALLOC)
    args = [a for a in argv[1:] if not a.startswith("--malloc")]
    print(f"== malloc: {setting}", flush=True)
    subprocess.run([sys.executable, "-m", "benchmarks.serving_speed", f"--malloc={setting}", *args],
                   env=env, check=True)


def _measure():
  # Imported here so that the parent process of --malloc=both stays light.
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  from export import published_models  # pylint: disable=import-outside-toplevel
  from export import savedmodel  # pylint: disable=import-outside-toplevel
  from hub_models import variants  # pylint: disable=import-outside-toplevel
  from hub_models.hub_module import RGB_MEAN, RGB_STD  # pylint: disable=import-outside-toplevel
  from tests import torch_reference  # pylint: disable=import-outside-toplevel

  threads = _THREADS.value
  torch.set_num_threads(threads)
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  # oneDNN matmuls use a single thread when TF runs ops concurrently; one op at a time keeps them
  # on all intra-op threads.
  tf.config.threading.set_inter_op_parallelism_threads(1)

  variant = variants.get(_VARIANT.value)
  reference = torch_reference.reference_model(variant.architecture, variant.num_classes)
  with tempfile.TemporaryDirectory() as workdir:
    checkpoint = os.path.join(workdir, "reference.pth")
    torch_reference.save_official(reference, checkpoint)
    path = os.path.join(workdir, "savedmodel")
    savedmodel.build_model(published_models.PublishedModel(variant), checkpoint).save(path)
    loaded = tf.saved_model.load(path)
    serving = loaded.signatures["serving_default"]

    mean = np.array(RGB_MEAN, np.float32).reshape(1, 3, 1, 1, 1) / 255.0
    std = np.array(RGB_STD, np.float32).reshape(1, 3, 1, 1, 1) / 255.0
    print(f"variant {variant.name}, {threads} threads, malloc {_MALLOC.value}")
    print("batch  torchvision s/clip  ours s/clip  torchvision clips/s  ours clips/s  speed-up"
          "  ours __call__ s/clip")
    for batch in [int(b) for b in _BATCH_SIZES.value]:
      video = np.random.RandomState(batch).rand(batch, 3, 32, 224, 224).astype(np.float32)
      normalised = torch.from_numpy((video - mean) / std)

      def run_torch():
        with torch.no_grad():
          return reference.norm(reference.features(reference.patch_embed(normalised))).mean(
              dim=(1, 2, 3)).numpy()

      def run_ours():
        return serving(video=tf.constant(video))["features"].numpy()

      def run_call():  # the root's __call__, as hub.KerasLayer calls it
        return loaded(tf.constant(video)).numpy()

      want, got = run_torch(), run_ours()
      error = np.linalg.norm(got - want) / np.linalg.norm(want)
      run_call()
      times = {"torch": [], "ours": [], "call": []}
      for _ in range(_REPEATS.value):
        for name, fn in (("torch", run_torch), ("ours", run_ours), ("call", run_call)):
          start = time.perf_counter()
          fn()
          times[name].append((time.perf_counter() - start) / batch)
      torch_s, ours_s = min(times["torch"]), min(times["ours"])
      print(f"{batch:5d}  {torch_s:18.3f}  {ours_s:11.3f}  {1 / torch_s:19.2f}  {1 / ours_s:12.2f}"
            f"  {torch_s / ours_s:7.2f}x  {min(times['call']):20.3f}"
            f"   (parity: relative error {error:.1e})", flush=True)


def main(argv):
  if _MALLOC.value == "both":
    _run_children(argv)
  else:
    _measure()


if __name__ == "__main__":
  app.run(main)
