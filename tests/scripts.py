"""The repository's top-level scripts (eval.py, …) as modules, loaded once, for tests that call their main()."""
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """REPO/`name`.py as the module `name`_script (registered first: dataclasses look their module up)."""
    key = f"{name}_script"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / f"{name}.py")
        sys.modules[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[key])
    return sys.modules[key]
