"""The distribution: one installed top-level name, a wheel that works outside the checkout,
and a serving process that never loads torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "data", "stream", "export", "retriever", "infra", "benchmarks", "cli")


def _source_copy(dst: Path) -> Path:
    """The checkout's files (tracked and not ignored) in ``dst``: the build leaves nothing in
    the working tree and sees nothing that a clone would not have."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    return dst


def test_wheel_has_one_top_level_name_and_runs_from_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    src = _source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(dist), str(src)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = dist.glob("longretriever-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top).decode().split() == ["longretriever"]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"longretriever"}
    assert "longretriever/infra/kafka/pom.xml" in names  # package data travels
    assert "longretriever/retriever/proto/longretriever.proto" in names

    env_dir = tmp_path / "venv"  # dependencies come from this interpreter's site-packages
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    out = subprocess.run([str(env_dir / "bin" / "longretriever"), "--help"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0 and "serve" in out.stdout and "train" in out.stdout, out.stderr
    code = ("import importlib, sys; mods = [importlib.import_module('longretriever.' + m) for m in sys.argv[1:]]; "
            "print('\\n'.join(m.__file__ for m in mods))")
    files = subprocess.run([str(py), "-c", code, *LAYERS], capture_output=True, text=True, check=True,
                           cwd=tmp_path).stdout.split()
    assert len(files) == len(LAYERS)
    assert all(str(env_dir) in f for f in files), files  # the wheel's copy, not the checkout


def test_serving_does_not_load_torch():
    code = ("import sys; import longretriever.cli; "
            "from longretriever.retriever import assemble, server, service, refresh, routing; "
            "from longretriever.stream import worker; "
            "import longretriever.retriever.bundle as b; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
