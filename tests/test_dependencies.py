"""The core install carries what `medseg infer` needs and no more, with floors that work together;
Dask is optional (the `cluster` extra) and its absence gives a clear error naming the extra."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="Python 3.10 has no tomllib and tomli is not installed")

REPO = Path(__file__).resolve().parents[1]
#: the lowest floor each of these may have (MONAI 1.6 needs torch >= 2.8, highdicom 0.28 pydicom >= 3.0.1)
FLOORS = {"torch": "2.8", "monai": "1.6", "pydicom": "3.0.1", "highdicom": "0.28"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements(section: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in section]
    return {r.name.lower(): r for r in reqs}


def floor(req: Requirement) -> Version | None:
    lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


def test_core_dependencies_leave_out_dask_and_the_gpl_jpeg_decoder():
    core = requirements(project()["dependencies"])
    assert not {"dask", "distributed", "dask-jobqueue"} & set(core)
    assert "pylibjpeg-libjpeg" not in core
    assert {"pylibjpeg", "pylibjpeg-openjpeg"} <= set(core)  # JPEG 2000 (MIT) stays in the core
    extras = project()["optional-dependencies"]
    assert {"dask", "dask-jobqueue"} <= set(requirements(extras["cluster"]))
    assert "pylibjpeg-libjpeg" in requirements(extras["jpeg"])
    assert {"dask", "dask-jobqueue"} <= set(requirements(extras["dev"]))  # the tests still run Dask


@pytest.mark.parametrize("name", FLOORS)
def test_floors_work_together_and_the_installed_versions_satisfy_them(name):
    req = requirements(project()["dependencies"])[name]
    assert floor(req) is not None and floor(req) >= Version(FLOORS[name]), str(req)
    try:
        installed = version(name)
    except PackageNotFoundError:
        pytest.fail(f"{name} is a core dependency but is not installed")
    assert req.specifier.contains(Version(installed).base_version, prereleases=True), (str(req), installed)


def test_every_installed_core_dependency_satisfies_its_range():
    for name, req in requirements(project()["dependencies"]).items():
        installed = Version(version(name))
        assert req.specifier.contains(installed.base_version, prereleases=True), (str(req), str(installed))


def test_without_dask_the_batch_runs_locally_and_a_scheduler_names_the_extra(tmp_path):
    """A fresh interpreter in which dask/distributed cannot be imported (as without medseg[cluster])."""
    code = f"""
import sys
for name in ("dask", "distributed", "dask_jobqueue"):
    sys.modules[name] = None
import medseg.batch.runner, medseg.cli.batch, medseg.inference.pipeline  # no Dask import at load
from medseg.cli import main
rc = main(["batch", {str(tmp_path / "in")!r}, "-o", {str(tmp_path / "out")!r}, "--scheduler", "local", "--quiet"])
sys.exit(rc)
"""
    (tmp_path / "in").mkdir()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and 'pip install "medseg[cluster]"' in err[0], proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_no_module_imports_dask_at_load_time():
    import medseg

    root = Path(medseg.__file__).parent
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")):  # module level (lazy imports are indented)
                assert line.split()[1].split(".")[0] not in ("dask", "distributed", "dask_jobqueue"), (path, line)
