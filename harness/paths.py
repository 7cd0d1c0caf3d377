"""Where the harness finds its config tree and against what it resolves a user's relative paths.

Two layouts run the same code. In a source checkout (the ``harness`` package
beside ``pyproject.toml`` and ``conf/``: an editable install, or ``PYTHONPATH``
set to the checkout) the config tree is the checkout's ``conf/`` and a relative
``data_root``, ``task.data_dir`` or ``task.data_files`` is the checkout's. In an
installed package (``pip install .``) the config tree is the package
``harness_conf`` (``conf/`` shipped as package data; see pyproject.toml) and a
relative path is the folder ``harness-run`` was started in (Hydra's original
working directory, the same in every job of a sweep). The task group,
``tasks/``, is a package in both layouts (``harness.data.catalog``).
``results_dir`` is the working directory's in both: it is where a user asked
for the results.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from importlib import resources
from pathlib import Path

# A checkout has both; an installed package's folder (site-packages) has neither.
CHECKOUT_MARKERS = ("pyproject.toml", "conf/config.yaml")
CONFIG_PACKAGE = "harness_conf"


@cache
def source_checkout() -> Path | None:
    """The source checkout this ``harness`` package was imported from, or None for an installed package."""
    root = Path(__file__).resolve().parents[1]
    return root if all((root / marker).is_file() for marker in CHECKOUT_MARKERS) else None


def config_dir() -> str:
    """The folder of Hydra's config tree (``config.yaml`` and its groups): the checkout's ``conf/``, else the
    installed ``harness_conf``. A checkout wins, so the configs always match the code that reads them."""
    root = source_checkout()
    if root is not None:
        return str(root / "conf")
    return str(resources.files(CONFIG_PACKAGE))


def project_root() -> Path:
    """What a relative user path is relative to: the checkout, else the folder the run was started in."""
    root = source_checkout()
    if root is not None:
        return root
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def project_path(path: str | os.PathLike) -> Path:
    """A user path: absolute as given, relative to :func:`project_root` otherwise."""
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else project_root() / expanded


EMBEDDED_SCHEME = "embedded://"


def is_local_path(pretrained: str) -> bool:
    """Whether ``model.pretrained`` names a folder rather than a Hub id: it exists, or it is written as a path
    (absolute, ``./``, ``../``, ``~``). ``org/name`` that does not exist here is a Hub id."""
    return pretrained.startswith(("/", "./", "../", "~", ".\\")) or Path(pretrained).expanduser().exists()


def resolve_pretrained(pretrained: str) -> str:
    """A path or Hub id that ``from_pretrained`` understands; ``embedded://<package>/<dir>`` is the folder
    inside the installed package (found through importlib, wherever the package is installed)."""
    from harness.config import ConfigError

    if not pretrained.startswith(EMBEDDED_SCHEME):
        return str(Path(pretrained).expanduser()) if is_local_path(pretrained) else pretrained
    package, _, subdir = pretrained[len(EMBEDDED_SCHEME) :].partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model.pretrained", f"package {package!r} is not installed (run `make setup`)")
    folder = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not folder.is_dir():
        raise ConfigError("model.pretrained", f"{folder} does not exist in package {package!r}")
    return str(folder)
