"""The installed package: the wheel holds every module under the `video_swin_hub` namespace and
every tool as a console script, and they run where the project exists only as that wheel, from
a folder outside the checkout. (The Beam pipeline on workers that have only the wheel is in
test_beam_pipeline.py.)"""

import os
import subprocess
import zipfile

from video_swin_hub.hub_models import variants
# pytest finds these fixtures in the module namespace.
from wheel_fixtures import REPO, wheel, wheel_env  # pylint: disable=unused-import

TOOLS = {
    "video-swin-export-all": "video_swin_hub.export.export_all",
    "video-swin-export-savedmodel": "video_swin_hub.export.export_savedmodel",
    "video-swin-write-docs": "video_swin_hub.export.write_docs",
    "video-swin-validate-docs": "video_swin_hub.export.validate_docs",
    "video-swin-extract-features": "video_swin_hub.extraction.extract_features",
    "video-swin-beam-pipeline": "video_swin_hub.extraction.beam_pipeline",
}


def module_files():
  """Every module of the three package folders, subpackages included: paths from the checkout's
  root, which the wheel puts under video_swin_hub/."""
  return sorted(os.path.relpath(os.path.join(folder, name), REPO)
                for top in ("hub_models", "export", "extraction")
                for folder, _, files in os.walk(os.path.join(REPO, top))
                for name in files if name.endswith(".py"))


def test_the_wheel_installs_every_package_under_one_namespace(wheel):
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
  assert {name.split("/")[0] for name in names} == {"video_swin_hub",
                                                    f"{wheel.name.split('-py3')[0]}.dist-info"}
  modules = module_files()
  assert "extraction/decode_worker.py" in modules and "export/docs/kaggle.py" in modules
  assert sorted(n for n in names if n.endswith(".py")) == [
      f"video_swin_hub/{module}" for module in modules]
  for script, module in TOOLS.items():
    assert f"{script} = {module}:cli_main" in entry_points


def test_every_library_module_imports_from_the_wheel_alone(wheel_env):
  """Each module (export's, whose imports of hub_models are relative, included) is the
  installed file, and no repository folder name is importable there. The tools' modules define
  their flags on import, so each runs in its own process below."""
  env, workdir = wheel_env
  modules = ["video_swin_hub." + path[:-len(".py")].replace(os.sep, ".").removesuffix(".__init__")
             for path in module_files()]
  modules = [name for name in modules if name not in TOOLS.values()]
  assert "video_swin_hub.export.destinations.gcs" in modules
  result = subprocess.run(
      ["python", "-c", "import importlib, os, sys, importlib.util as u\n"
       "for name in sys.argv[1:]:\n"
       "  print(importlib.import_module(name).__file__.startswith(sys.prefix + os.sep), name)\n"
       "print(*(u.find_spec(top) for top in ('export', 'hub_models', 'extraction')))",
       *modules], cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[:-1] == [f"True {name}" for name in modules]
  assert lines[-1] == "None None None"


def run_tool(wheel_env, script, *args):
  env, workdir = wheel_env
  return subprocess.run([script, *args], cwd=workdir, env=env, capture_output=True, text=True,
                        timeout=300, check=False)


def test_every_tool_runs_as_a_console_script_from_the_wheel(wheel_env, tmp_path):
  result = run_tool(wheel_env, "video-swin-write-docs", f"--output_dir={tmp_path}",
                    "--asset_base_url=https://example.com/archives")
  assert result.returncode == 0, result.stderr[-3000:]
  docs_root = tmp_path / "tfhub.dev" / "assets" / "docs"
  written = {str(p.relative_to(docs_root / "video-swin-hub"))
             for p in docs_root.rglob("*.md")}
  assert written == {"video-swin-hub.md", "collections/video-swin-transformer/1.md",
                     *(f"models/{v.name}/1.md" for v in variants.collection())}
  result = run_tool(wheel_env, "video-swin-validate-docs", f"--docs_root={docs_root}")
  assert result.returncode == 0, result.stderr[-3000:]

  # The others up to their first check of real input: one error line, nothing written.
  out = tmp_path / "out"
  missing = {
      "video-swin-export-savedmodel": ["--variant=swin_tiny_patch244_window877_kinetics400_1k",
                                       f"--checkpoint={tmp_path}/missing.pth",
                                       f"--output_dir={out}"],
      "video-swin-export-all": ["--variants=swin_tiny_patch244_window877_kinetics400_1k",
                                f"--checkpoint_dir={tmp_path}/missing", f"--output_dir={out}"],
      "video-swin-extract-features": [f"--model={tmp_path}/missing", f"--videos={tmp_path}",
                                      f"--output={out}"],
      "video-swin-beam-pipeline": [f"--model={tmp_path}/missing", f"--videos={tmp_path}",
                                   f"--output={out}"],
  }
  assert set(missing) | {"video-swin-write-docs", "video-swin-validate-docs"} == set(TOOLS)
  for script, flags in missing.items():
    result = run_tool(wheel_env, script, *flags)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith("error: ") and "missing" in last, (
        script, result.stderr[-3000:])
    assert not out.exists()
