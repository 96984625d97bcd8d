"""An app embeds the runtime without torch or transformers: importing and using it must not pull them in."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "optimum", "onnx")


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys; print('MODULES:', ' '.join(sorted(m for m in sys.modules if '.' not in m)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    line = [l for l in result.stdout.splitlines() if l.startswith("MODULES:")][-1]
    return set(line.split()[1:])


def test_runtime_packages_import_no_torch():
    loaded = _modules_after("import bertship.runtimes, bertship.profiles, bertship.bench, bertship.cli")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_load_run_verify_and_inspect_import_no_torch(tiny_artifact):
    code = (
        "from bertship.runtimes import load, verify\n"
        "from bertship.cli import main\n"
        f"m = load({str(tiny_artifact)!r}, backend='openvino'); m.encode(['hello'])\n"
        f"verify({str(tiny_artifact)!r})\n"
        f"assert main(['inspect', {str(tiny_artifact)!r}]) == 0\n"
    )
    loaded = _modules_after(code)
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_packages_install_under_one_namespace(tmp_path):
    """Installing bertship claims no generic top-level names such as `bench` or `profiles`."""
    code = (
        "import importlib.util as u\n"
        "assert all(u.find_spec(n) is None for n in ('bench', 'profiles', 'runtimes', 'exporter')), 'top-level name'\n"
        "import bertship.bench, bertship.profiles, bertship.runtimes, bertship.exporter\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
