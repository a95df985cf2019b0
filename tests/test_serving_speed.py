"""Smoke run of benchmarks/serving_speed.py through its CLI: every implementation, both ceilings and
both stock-TF bounds get a row whose columns are numbers (no timing is asserted). The kernels the
bound times must do exactly the matmul and convolution FLOPs that torch counts in torchvision's
forward, including where windows shrink and grids are padded."""

import os
import re
import subprocess
import sys

import pytest

from benchmarks import serving_speed
from tests import conftest
from tests import torch_reference
from video_swin_hub.hub_models import variants


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = r"[0-9.]+(?:e[-+][0-9]+)?"


def _row(label, error):
  """A row: median, min, fraction of the ceiling, error vs torchvision fp32 (a number or "-"),
  then one or two "Nx" ratio columns."""
  error_column = NUMBER if error else "-"
  return re.compile(rf"^{re.escape(label)}\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})%\s+"
                    rf"({error_column})((?:\s+{NUMBER}x)+)$", re.MULTILINE)


def test_smoke_run_prints_every_row():
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.serving_speed", "--variants=test_small",
       "--batch_sizes=1", "--input_size=4,32,32", "--repeats=1",
       f"--implementations={','.join(serving_speed.IMPLEMENTATIONS)}"],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "== test_small, batch 1:" in out, out
  expected = {"ours fp32": True, "ours bf16": True, "XLA jit of ours fp32": True,
              "XLA jit of ours bf16": True, "torchvision fp32": True, "torchvision bf16": True,
              "keras-cv fp32": False, "keras-cv bf16": False}
  for label, has_error in expected.items():
    match = _row(label, has_error).search(out)
    assert match, f"no numeric row {label!r} in:\n{out}"
    assert len(re.findall("x", match.group(5))) == 2, match.group(0)
    if has_error:
      # Same weights as torchvision: fp32 agrees closely, bf16 within bf16 rounding.
      limit = 1e-5 if label.endswith("fp32") else 3e-2
      assert float(match.group(4)) < limit, match.group(0)
  for dtype in ("float32", "bfloat16"):
    match = re.search(rf"^ceiling {dtype} \(({NUMBER}) GFLOP/s\)\s+({NUMBER})\s+({NUMBER})\s+"
                      rf"100\.0%\s+-((?:\s+{NUMBER}x)+)$", out, re.MULTILINE)
    assert match, f"no ceiling row for {dtype} in:\n{out}"
    assert float(match.group(1)) > 0
  ours = _row("ours fp32", True).search(out)
  assert re.findall(NUMBER + "x", ours.group(5))[0] == "1.00x"
  # The run checked the attention kernels' shapes against torch's count of the batched matmuls;
  # SMALL_ARCH's windows shrink at 4x32x32, so that check covers the shrinking too.
  assert re.search(rf"GFLOP per clip, ({NUMBER}) of them in the attention", out), out
  for dtype in ("float32", "bfloat16"):
    row = _row(f"stock-TF bound {dtype}", False).search(out)
    assert row, f"no bound row for {dtype} in:\n{out}"
    parts = re.search(rf"^stock-TF bound {dtype} \(medians\): ({NUMBER}) s of matmuls and "
                      rf"convolution \+ ({NUMBER}) s of attention kernels \+ ({NUMBER}) s of "
                      rf"LayerNorms$", out, re.MULTILINE)
    assert parts, f"no split of the {dtype} bound in:\n{out}"
    assert all(float(part) > 0 for part in parts.groups()), parts.group(0)
    # With one round the bound (printed to 3 decimals) is its three parts.
    assert abs(sum(map(float, parts.groups())) - float(row.group(1))) <= 0.002
  for peer in ("XLA jit of ours fp32", "XLA jit of ours bf16", "torchvision fp32",
               "torchvision bf16", "keras-cv fp32", "keras-cv bf16"):
    assert re.search(rf"^with stock TF kernels at best {NUMBER}x in float32, {NUMBER}x in "
                     rf"bfloat16 faster than {re.escape(peer)}$", out, re.MULTILINE), out


@pytest.mark.parametrize("arch, input_size", [
    (conftest.SMALL_ARCH, (4, 32, 32)),    # windows shrink on every axis from stage 2 on
    (conftest.SMALL_ARCH, (6, 40, 44)),    # grids padded to whole windows, odd sizes merged
    (conftest.SMALL_ARCH, (17, 64, 64)),   # an odd number of frames
    (variants.get(serving_speed.SWIN_T).architecture, (32, 224, 224)),
    (variants.get(serving_speed.SWIN_B).architecture, (32, 224, 224)),
])
def test_kernel_flops_equal_torchs_count(arch, input_size):
  reference = torch_reference.reference_model(arch, num_classes=10)
  want = serving_speed._flops_per_clip(reference, input_size)
  for batch in (1, 2):
    got = serving_speed._kernel_flops(serving_speed._kernel_plan(arch, input_size, batch), batch)
    assert got == pytest.approx(want, rel=1e-9), (batch, got, want)
