"""Smoke run of benchmarks/serving_speed.py through its CLI: every implementation, both ceilings and
both stock-TF bounds get a row whose columns are numbers (no timing is asserted)."""

import os
import re
import subprocess
import sys


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
       "--batch_sizes=1", "--input_size=4,32,32", "--repeats=1"],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "== test_small, batch 1:" in out, out
  expected = {"ours fp32": True, "ours bf16": True, "torchvision fp32": True,
              "torchvision bf16": True, "keras-cv fp32": False, "keras-cv bf16": False}
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
    parts = re.search(rf"^stock-TF bound {dtype}: ({NUMBER}) s of matmuls outside the attention "
                      rf"at the ceiling \+ ({NUMBER}) s of attention kernels$", out, re.MULTILINE)
    assert parts, f"no split of the {dtype} bound in:\n{out}"
    assert float(parts.group(2)) > 0
    # The bound is its two parts (each printed to 3 decimals).
    assert abs(float(parts.group(1)) + float(parts.group(2)) - float(row.group(1))) <= 0.0015
  for peer in ("torchvision fp32", "torchvision bf16", "keras-cv fp32", "keras-cv bf16"):
    assert re.search(rf"^with stock TF kernels at best {NUMBER}x in float32, {NUMBER}x in "
                     rf"bfloat16 faster than {re.escape(peer)}$", out, re.MULTILINE), out
