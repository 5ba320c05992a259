"""`pip install .` installs the code: a wheel built from the tree holds every module and runs from elsewhere."""
import glob
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_holds_every_module_and_runs_from_another_directory(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), ROOT], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel, = glob.glob(str(tmp_path / "dist" / "jaxrepro-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {os.path.relpath(p, ROOT) for d in ("jaxrepro", "configs")
            for p in glob.glob(os.path.join(ROOT, d, "**", "*.py"), recursive=True)}
    tree |= {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "jaxrepro", "**", "*.cc"), recursive=True)}
    assert "jaxrepro/models/nhwc_to_chwn.cc" in tree                 # the C++ kernel's source travels too
    assert "jaxrepro/models/conv_weight_grad.cc" in tree
    assert tree and tree <= names, sorted(tree - names)
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), wheel],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))              # the installed copy comes first on sys.path
    code = "import jaxrepro, configs; print(jaxrepro.__file__); print(configs.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.returncode == 0 and all(line.startswith(str(target)) for line in where.stdout.split()), where
    info = subprocess.run([sys.executable, "-m", "jaxrepro.main", f"--config={ROOT}/configs/quickstart.py",
                           "--mode=info"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert info.returncode == 0 and "parameters" in info.stdout, info.stderr[-3000:]
