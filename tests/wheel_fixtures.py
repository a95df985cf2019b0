"""The project's wheel, built from the checkout, and a virtual environment that has the project only
as that wheel: shared by the tests of what the installed package does."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """The project's wheel, built offline from a copy of its sources (so that no build files are
  left in the checkout)."""
  source = tmp_path_factory.mktemp("source")
  for name in ("hub_models", "export", "extraction"):
    shutil.copytree(os.path.join(REPO, name), source / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), source)
  dist = tmp_path_factory.mktemp("dist")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "-w", str(dist), str(source)], check=True,
                 capture_output=True, timeout=300)
  (path,) = dist.glob("video_swin_hub-*.whl")
  return path


@pytest.fixture(scope="module")
def wheel_env(wheel, tmp_path_factory):
  """(environment variables, working folder) of a virtual environment where the project exists
  only as the installed wheel: its third-party packages are the test environment's, reached
  through a .pth line naming that site-packages folder (a folder a .pth adds is not a site
  folder, so the editable install's .pth there, which would make the checkout importable, is not
  run), and the working folder is outside the repository."""
  root = tmp_path_factory.mktemp("wheel_env")
  venv = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                 timeout=120)
  python = str(venv / "bin" / "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(site, "test_env.pth"), "w", encoding="utf-8") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
                  "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                 timeout=300)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
  workdir = root / "work"
  workdir.mkdir()
  where = subprocess.run(
      ["python", "-c", "import video_swin_hub.extraction as e, importlib.util as u; "
       "print(e.__file__); print(u.find_spec('extraction'))"],
      cwd=workdir, env=env, check=True, capture_output=True, text=True).stdout.split()
  assert where == [os.path.join(site, "video_swin_hub", "extraction", "__init__.py"), "None"]
  return env, workdir
