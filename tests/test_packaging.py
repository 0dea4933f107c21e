"""What an installed sb2dask carries: the package list of pyproject.toml against the source tree,
the data packages (``sb2dask.catalogs``, ``sb2dask.deploy``) found through importlib.resources,
the shipped grid and models, one version source, and a real wheel installed away from the tree."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import resources
from pathlib import Path

import pytest

import sb2dask
from sb2dask.cluster import deploy_config, find_config
from sb2dask.infer.schema import TABLES, load_schema
from sb2dask.library import load_library
from sb2dask.packagedata import DATA_PACKAGES, data_folder

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DEPLOY_FILES = {"slurm-cpu.yaml", "slurm-gpu.yaml", "pbs-cpu.yaml", "pbs-gpu.yaml",
                "run_pipeline.sh"}


def _source_packages() -> set[str]:
    """Dotted names of the regular packages under sb2dask/ in the source tree."""
    return {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "sb2dask").rglob(
        "__init__.py") if "__pycache__" not in p.parts}


def test_package_list_matches_the_source_tree():
    setuptools = PYPROJECT["tool"]["setuptools"]
    mapped = setuptools["package-dir"]
    assert set(mapped) == set(DATA_PACKAGES.values())
    assert set(setuptools["packages"]) == _source_packages() | set(mapped), (
        "pyproject.toml [tool.setuptools] packages must list every package under sb2dask/ "
        "(a missing one is absent from wheels while editable installs still import it)")
    for package, folder in mapped.items():
        assert (REPO / folder / "__init__.py").is_file(), folder
        # nothing inside sb2dask/ may shadow the mapped folder (it was a git symlink once)
        assert not (REPO / Path(*package.split("."))).exists(), package
    # code directories without __init__.py would be namespace packages, left out of wheels
    orphans = [str(d.relative_to(REPO)) for d in (REPO / "sb2dask").rglob("*") if d.is_dir()
               and "__pycache__" not in d.parts and any(d.glob("*.py"))
               and not (d / "__init__.py").exists()]
    assert not orphans


def test_installed_package_finds_its_data_through_importlib_resources(tmp_path, monkeypatch):
    catalogs = resources.files("sb2dask.catalogs")
    assert {t.name for t in catalogs.iterdir()} >= set(TABLES.values())
    assert data_folder("catalogs") == catalogs
    for table in TABLES:
        names = [c["name"] for c in load_schema(table)["columns"]]
        assert "source_id" in names and len(names) == len(set(names)) > 5
    deploy = resources.files("sb2dask.deploy")
    assert {t.name for t in deploy.iterdir()} >= DEPLOY_FILES
    assert os.access(data_folder("deploy") / "run_pipeline.sh", os.X_OK)
    # from a directory without deploy/, a name resolves to the installed file
    monkeypatch.chdir(tmp_path)
    assert find_config("slurm-gpu") == data_folder("deploy") / "slurm-gpu.yaml"
    assert "slurm" in deploy_config("slurm-gpu")["jobqueue"]
    with pytest.raises(FileNotFoundError, match="known names: .*pbs-cpu"):
        find_config("no-such-config")
    # an edited copy in ./deploy wins over the installed one
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "slurm-gpu.yaml").write_text("jobqueue: {slurm: {cores: 3}}\n")
    assert find_config("slurm-gpu") == tmp_path / "deploy" / "slurm-gpu.yaml"
    with pytest.raises(ValueError, match="unknown data folder 'models'"):
        data_folder("models")


def test_shipped_grid_and_models_are_package_data():
    from sb2dask.infer.predict import DEFAULT_MODEL_DIR, MODEL_PRESETS, PAPER_MODEL_DIR
    from sb2dask.library.embedded import EMBEDDED_GRID_PATH

    package = resources.files("sb2dask")
    assert EMBEDDED_GRID_PATH == package / "library" / "data" / "embedded_grid.zarr.zip"
    assert EMBEDDED_GRID_PATH.stat().st_size > 1_000_000
    manifests = sorted(p.stem for p in PAPER_MODEL_DIR.glob("*-*.json"))
    assert PAPER_MODEL_DIR == package / "data" / "models" == MODEL_PRESETS["paper"]
    assert {m.split("-")[0] for m in manifests} == {"teff", "logg", "feh", "vsini", "p_binary"}
    assert all((PAPER_MODEL_DIR / f"{m}.safetensors").is_file() for m in manifests)
    # the label uncertainties' calibration (docs/models.md) ships beside the manifests
    assert (PAPER_MODEL_DIR / "calibration.json").is_file()
    # the default: three distilled students with their mixture's calibration; ``fast`` one
    # student
    assert DEFAULT_MODEL_DIR == package / "data" / "models" / "students" \
        == MODEL_PRESETS["students"]
    for i in range(3):
        assert (DEFAULT_MODEL_DIR / f"student-{i}.json").is_file()
        assert (DEFAULT_MODEL_DIR / f"student-{i}.safetensors").is_file()
    assert (DEFAULT_MODEL_DIR / "students.json").is_file()
    fast = package / "data" / "models" / "fast"
    assert MODEL_PRESETS["fast"] == fast
    assert (fast / "student-0.safetensors").is_file()


def test_version_has_one_source():
    declared = PYPROJECT["project"]["version"]
    assert importlib.metadata.version("sb2dask") == declared
    assert sb2dask.__version__ == declared


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text().splitlines()
    (command,) = [line.strip() for line in readme if "python -m pytest" in line]
    assert '".[test]"' in command and "ruff check" in command  # what users get, and the lint
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci if not line.startswith("#")]


def _wheel_tools_missing() -> str | None:
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1):  # older setuptools builds wheels only with the wheel package
        try:
            import wheel  # noqa: F401
        except ImportError:
            return f"setuptools {setuptools.__version__} needs the wheel package"
    return None


_WHEEL_CHECK = """
import json, sys
from pathlib import Path
import sb2dask
from sb2dask.cluster import find_config
from sb2dask.infer.predict import DEFAULT_MODEL_DIR, PAPER_MODEL_DIR
from sb2dask.infer.schema import load_schema
from sb2dask.library import load_library
from sb2dask.packagedata import data_folder
print(json.dumps(dict(
    package=sb2dask.__file__, version=sb2dask.__version__,
    epoch_columns=len(load_schema("epoch")["columns"]),
    catalogs=str(data_folder("catalogs")), deploy=str(data_folder("deploy")),
    slurm_gpu=str(find_config("slurm-gpu")),
    grid_nodes=int(load_library("embedded").available.sum()),
    models=sorted(p.name for p in PAPER_MODEL_DIR.glob("*.json")),
    default_models=sorted(p.name for p in DEFAULT_MODEL_DIR.glob("*.json")))))
"""


@pytest.mark.integration
def test_wheel_carries_the_data_and_finds_it_away_from_the_source_tree(tmp_path):
    """Build a wheel from a copy of the tree, compare its files with the tree, install it into a
    directory of its own (no dependencies: the test environment's are used) and use it from a
    directory that has no deploy/ or catalogs/."""
    missing = _wheel_tools_missing()
    if missing:
        pytest.skip(f"cannot build a wheel here: {missing}")
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    for folder in ("sb2dask", *PYPROJECT["tool"]["setuptools"]["package-dir"].values()):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(src)], check=True, timeout=300)
    (wheel,) = wheels.glob("sb2dask-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"sb2dask/{p.relative_to(src / 'sb2dask').as_posix()}"
                for p in (src / "sb2dask").rglob("*") if p.is_file()}
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        prefix = package.replace(".", "/")
        expected |= {f"{prefix}/{p.name}" for p in (src / folder).iterdir() if p.is_file()}
    assert not expected - names, f"files of the source tree missing from the wheel: " \
                                 f"{sorted(expected - names)}"

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)  # before site-packages, whose editable finder comes last
    out = subprocess.run([sys.executable, "-c", _WHEEL_CHECK], cwd=away, env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    got = json.loads(out.stdout.splitlines()[-1])
    installed = target / "sb2dask"
    assert Path(got["package"]) == installed / "__init__.py"
    assert got["version"] == PYPROJECT["project"]["version"]
    assert got["epoch_columns"] == len(load_schema("epoch")["columns"])
    assert Path(got["catalogs"]) == installed / "catalogs"
    assert Path(got["slurm_gpu"]) == installed / "deploy" / "slurm-gpu.yaml"
    assert got["grid_nodes"] == int(load_library("embedded").available.sum()) > 1000
    assert len(got["models"]) == len(list((REPO / "sb2dask" / "data" / "models").glob("*.json")))
    assert got["default_models"] == ["student-0.json", "student-1.json", "student-2.json",
                                     "students.json"]
    assert os.access(installed / "deploy" / "run_pipeline.sh", os.X_OK)
