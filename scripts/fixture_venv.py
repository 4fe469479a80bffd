"""The private Python environment of the scripts that make fixtures and the bundled model.

The engine needs no Python. The scripts that compare it with transformers do: each calls
ensure_dependencies() before its imports, which returns at once where the modules import, and
otherwise re-executes the script inside <repo>/.venv-fixtures, creating it and installing into it
what is missing (torch's CPU wheel first where its index is reachable, then plain PyPI).
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_DIR = REPO_ROOT / ".venv-fixtures"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# everything any of the scripts imports, installed together so that one venv serves them all
PACKAGES = ("transformers", "tokenizers", "safetensors", "numpy", "jinja2")


def ensure_dependencies(modules, label, packages=None):
    """Re-executes the calling script under .venv-fixtures if one of `modules` is missing.

    packages: what to pip-install when they are missing (default: the fixture scripts' set, torch
    first). A script that needs no torch (the openai client test) names its own, so that making
    the venv for it costs seconds, not a torch download; exits with status 77 (ctest's "skipped")
    when they cannot be installed, so a machine without PyPI shows the test as skipped."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    venv_python = VENV_DIR / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV_DIR.resolve():
        sys.exit(f"error: {', '.join(missing)} still missing inside {VENV_DIR}; "
                 f"delete that folder and run again")
    print(f"[{label}] missing {', '.join(missing)}; using the venv {VENV_DIR}", flush=True)
    if not venv_python.exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)]).returncode == 0
        if not made and packages is not None:
            print(f"[{label}] SKIPPED: could not make the venv {VENV_DIR}", flush=True)
            sys.exit(77)
        if not made:
            sys.exit(f"error: could not make the venv {VENV_DIR}")

    def pip(*args):
        cmd = [str(venv_python), "-m", "pip", "install", "--disable-pip-version-check", *args]
        print(f"[{label}] $", " ".join(cmd), flush=True)
        return subprocess.run(cmd).returncode == 0

    def importable(module):
        return subprocess.run([str(venv_python), "-c", f"import {module}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    if packages is not None:
        if not all(importable(m) for m in modules) and not pip(*packages):
            print(f"[{label}] SKIPPED: could not install {', '.join(packages)}", flush=True)
            sys.exit(77)
        script = Path(sys.argv[0]).resolve()
        os.execv(str(venv_python), [str(venv_python), str(script), *sys.argv[1:]])
    # The CPU-only torch wheel is a fraction of the size of the default CUDA one.
    if not importable("torch") and not pip("torch", "--index-url", TORCH_CPU_INDEX) \
            and not pip("torch"):
        sys.exit("error: could not install torch")
    if not all(importable(m) for m in modules) and not pip(*PACKAGES):
        sys.exit(f"error: could not install {', '.join(PACKAGES)}")
    script = Path(sys.argv[0]).resolve()
    os.execv(str(venv_python), [str(venv_python), str(script), *sys.argv[1:]])
