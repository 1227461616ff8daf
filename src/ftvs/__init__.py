"""ftvs: fine-tuning vs. from-scratch, a controlled study of decoder-only text classifiers.

`from ftvs import prepare, train, baseline, evaluate, compare, study` gives the Python API (ftvs.api). It is
loaded on first use, so `import ftvs` stays cheap (no torch).
"""

import sys
import types

__version__ = "0.1.0"

API = ("prepare", "train", "baseline", "evaluate", "compare", "study")
__all__ = ["__version__", *API]


def _api_attribute(name: str) -> property:
    def get(module):
        from ftvs import api

        return getattr(api, name)

    def set_(module, value):
        # Most API names are also submodules (ftvs.train, ftvs.study, ...), and importing a submodule binds
        # it as a package attribute: keep the function there instead (the submodule stays importable
        # through sys.modules: `from ftvs.train import ...` is unaffected)
        if not isinstance(value, types.ModuleType):
            raise AttributeError(f"ftvs.{name} is the API function; it cannot be replaced")

    return property(get, set_)


class _Package(types.ModuleType):
    """The ftvs package, whose API names resolve lazily (a module-level __getattr__ would be bypassed once
    the submodule of the same name is imported)."""


for _name in API:
    setattr(_Package, _name, _api_attribute(_name))
sys.modules[__name__].__class__ = _Package
