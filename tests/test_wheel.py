"""The wheel works on its own: built from this tree, installed into a fresh venv, run outside the checkout.

The venv reuses this environment's dependencies (a ``.pth`` file naming its site-packages: no download) and
gets only our wheel (``--no-deps``). Every command runs from a temporary folder with no PYTHONPATH, so the
checkout cannot be imported: the bundles, the protocols and the gadget subprocesses must come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from recon_plugin.coils import bart_available
from recon_plugin.protocols_cli import install_protocols, packaged_protocols
from recon_plugin.replay import read_images
from recon_plugin.sample_data import DEFAULT_BUNDLES, DEMO_BUNDLE, FULL_BUNDLE, PREVIOUS_SINGLE_COIL_BUNDLE

ROOT = Path(__file__).resolve().parents[1]
RAW_2D = ROOT / "sample_data" / "raw" / "brain2d_multislice.h5"
#: What a build needs from the tree (sample_data: only the bundles; the raw files and the npz stay out).
SOURCES = ("pyproject.toml", "README.md", "recon_plugin", "training", "protocols", "sample_data/weights")
SHIPPED_BUNDLES = sorted(
    {p.name for p in (*DEFAULT_BUNDLES.values(), DEMO_BUNDLE, FULL_BUNDLE, PREVIOUS_SINGLE_COIL_BUNDLE)}
)
BUNDLE_FILES = ("bundle.json", "weights.safetensors", "MODEL_CARD.md")


def _copy_sources(dest: Path) -> Path:
    """The files a build reads, copied (a build writes build/ and *.egg-info next to them)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        source, target = ROOT / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)
    return dest


def _isolation_flags() -> list[str]:
    """Build with this environment's setuptools when it can write wheels (offline), else in pip's isolated
    build environment (setuptools from the package index)."""
    try:
        major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return []
    try:
        version("wheel")
        has_wheel = True
    except PackageNotFoundError:
        has_wheel = False
    native = (major, minor) >= (70, 1) or ((major, minor) >= (68, 0) and has_wheel)
    return ["--no-build-isolation"] if native else []


def _run(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def _venv(path: Path) -> Path:
    """A venv without pip whose dependencies are this environment's (a .pth file); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = [*site.getsitepackages(), site.getusersitepackages()]
    Path(purelib, "_outer_environment.pth").write_text("\n".join(p for p in ours if Path(p).is_dir()) + "\n")
    return python


def _clean_env(venv: Path) -> dict[str, str]:
    """Our environment with the venv first on PATH and nothing that could import the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(tmp / "src")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", *_isolation_flags(), "-w", str(tmp / "dist")]
    done = _run([*command, str(src)], dict(os.environ), tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (tmp / "dist").glob("rgancs_recon_plugin-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(venv, environment, a working folder outside the checkout) with the wheel installed."""
    tmp = tmp_path_factory.mktemp("installed")
    venv = tmp / "venv"
    python = _venv(venv)
    env = _clean_env(venv)
    pip = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)]
    done = _run(pip, env, tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    work = tmp / "work"
    work.mkdir()
    return venv, env, work


@pytest.mark.slow
def test_wheel_ships_every_package_the_bundles_and_the_protocols(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    inits = [p for top in ("recon_plugin", "training") for p in ROOT.glob(f"{top}/**/__init__.py")]
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in inits)
    assert packages and all(f"{p}/__init__.py" in names for p in packages), "pyproject.toml must list every package"
    for protocol in sorted((ROOT / "protocols").glob("*.xml")):
        assert f"recon_plugin/protocols/{protocol.name}" in names
    for bundle in SHIPPED_BUNDLES:
        assert {f"recon_plugin/weights/{bundle}/{f}" for f in BUNDLE_FILES} <= names
    assert "recon_plugin/review/static/reader.js" in names
    assert not [n for n in names if n.endswith((".h5", ".npz")) or n.startswith("sample_data/")]


@pytest.mark.slow
def test_installed_package_runs_from_the_venv(installed):
    venv, env, work = installed
    code = (
        "import json, sys, recon_plugin, recon_plugin.sample_data as s\n"
        "from recon_plugin.model import load_bundle\n"
        "from recon_plugin.mrd_server import DEFAULT_PROTOCOLS_DIR\n"
        "from recon_plugin.replay.external import child_environment\n"
        "load_bundle(s.DEFAULT_BUNDLE)\n"
        "print(json.dumps({'package': recon_plugin.__file__, 'weights': str(s.WEIGHTS_DIR),"
        " 'protocols': str(DEFAULT_PROTOCOLS_DIR), 'default': str(s.DEFAULT_BUNDLE), 'path': sys.path,"
        " 'child_pythonpath': child_environment().get('PYTHONPATH', '')}))\n"
    )
    done = _run([str(venv / "bin" / "python"), "-c", code], env, work)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    site_packages = Path(found["package"]).parents[1]
    assert site_packages.is_relative_to(venv), found["package"]
    assert Path(found["weights"]) == site_packages / "recon_plugin" / "weights"
    assert Path(found["protocols"]) == site_packages / "recon_plugin" / "protocols"
    assert (Path(found["default"]) / "bundle.json").is_file()
    assert not [p for p in found["path"] if p and Path(p).resolve() == ROOT]
    assert str(ROOT) not in found["child_pythonpath"] and str(site_packages) not in found["child_pythonpath"]


@pytest.mark.slow
def test_protocols_list_and_install(installed, tmp_path):
    venv, env, work = installed
    listed = _run(["recon-plugin", "protocols", "list"], env, work)
    assert listed.returncode == 0, listed.stderr
    assert str(venv) in listed.stdout.splitlines()[0]
    for protocol in (ROOT / "protocols").glob("*.xml"):
        assert f"  {protocol.stem} " in listed.stdout
    config = tmp_path / "gadgetron" / "share" / "gadgetron" / "config"
    config.mkdir(parents=True)
    done = _run(["recon-plugin", "protocols", "install", str(config)], env, work)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in config.iterdir()) == sorted(p.name for p in (ROOT / "protocols").glob("*.xml"))


@pytest.mark.slow
def test_demo_says_the_sample_data_come_with_a_checkout(installed):
    _, env, work = installed
    done = _run(["recon-plugin", "demo", "--out", str(work / "demo"), "--no-raw"], env, work)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "InvalidInputError" in done.stdout and "checkout" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not bart_available(), reason="BART not installed")
def test_replay_side_by_side_from_the_wheel(installed):
    """The packaged side_by_side protocol; the four gadget subprocesses import the installed package."""
    venv, env, work = installed
    path = _run(["recon-plugin", "protocols", "path", "side_by_side"], env, work)
    assert path.returncode == 0, path.stderr
    protocol = Path(path.stdout.strip())
    assert protocol.is_relative_to(venv) and protocol.is_file()
    out = work / "side_by_side.h5"
    done = _run(["recon-plugin", "replay", str(RAW_2D), "--protocol", str(protocol), "--out", str(out)], env, work)
    assert done.returncode == 0, done.stdout + done.stderr
    images = read_images(out)
    assert sorted(images) == [1, 2, 3, 4, 9] and all(len(series) == 4 for series in images.values())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, server: subprocess.Popen, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert server.poll() is None, "recon-plugin serve exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"recon-plugin serve did not listen on port {port} within {limit:g} s")


@pytest.mark.slow
def test_serve_finds_the_packaged_protocols(installed):
    venv, env, work = installed
    port = _free_port()
    log = (work / "serve.log").open("w")
    server = subprocess.Popen(
        ["recon-plugin", "serve", "--port", str(port)], env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_listening(port, server)
        summary = work / "client.json"
        command = ["recon-plugin", "client", str(RAW_2D), "--config", "zero_filled", "--port", str(port)]
        done = _run([*command, "--out", str(work / "served.h5"), "--json", str(summary)], env, work)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(summary.read_text())
        assert report["ok"] and report["images"] == 4, report
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C; ignored when pytest runs as a background job
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.terminate()
            server.wait(15)
        log.close()
    served = "".join((work / "serve.log").read_text().splitlines())  # unwrapped: the console may fold the path
    assert str(venv) in served and "recon_plugin/protocols" in served, served


@pytest.mark.slow
def test_editable_install_finds_the_checkout_data(tmp_path):
    """``pip install -e .``: the data stay in the checkout, where the constants point."""
    src = _copy_sources(tmp_path / "src")
    python = _venv(tmp_path / "venv")
    env = _clean_env(tmp_path / "venv")
    pip = [str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", *_isolation_flags()]
    done = _run([*pip, "-e", str(src)], env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    code = (
        "import recon_plugin, recon_plugin.sample_data as s\n"
        "from recon_plugin.mrd_server import DEFAULT_PROTOCOLS_DIR\n"
        "print(recon_plugin.__file__, s.WEIGHTS_DIR, DEFAULT_PROTOCOLS_DIR, s.DEFAULT_BUNDLE.is_dir())\n"
    )
    done = _run([str(python), "-c", code], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(src / "recon_plugin" / "__init__.py"),
        str(src / "sample_data" / "weights"),
        str(src / "protocols"),
        "True",
    ]


def test_packaged_protocols_are_described():
    protocols = {p.name: p for p in packaged_protocols()}
    assert sorted(protocols) == sorted(p.stem for p in (ROOT / "protocols").glob("*.xml"))
    assert protocols["side_by_side"].targets == ("zero_filled", "rgancs", "cs_wavelet", "cs_tv")
    assert all(p.description and "\n" not in p.description for p in protocols.values())


def test_install_refuses_a_changed_file_unless_forced(tmp_path):
    names = sorted(p.name for p in (ROOT / "protocols").glob("*.xml"))
    assert {action for action, _ in install_protocols(tmp_path)} == {"installed"}
    assert {action for action, _ in install_protocols(tmp_path)} == {"unchanged"}
    edited = tmp_path / "rgancs.xml"
    edited.write_text("<configuration/>")
    (tmp_path / "zero_filled.xml").unlink()
    with pytest.raises(FileExistsError, match=r"rgancs\.xml differs"):
        install_protocols(tmp_path)
    assert edited.read_text() == "<configuration/>" and not (tmp_path / "zero_filled.xml").exists()
    done = dict((target.name, action) for action, target in install_protocols(tmp_path, force=True))
    assert done["rgancs.xml"] == "replaced" and done["zero_filled.xml"] == "installed"
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert edited.read_bytes() == (ROOT / "protocols" / "rgancs.xml").read_bytes()
    with pytest.raises(FileNotFoundError, match="not a folder"):
        install_protocols(tmp_path / "missing")
