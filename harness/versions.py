"""Installed releases of the libraries a figure depends on.

Kept apart from :mod:`harness.measure` (which needs torch) because the data caches key their entries by these
versions, and loading data must not import torch: a bad data file is answered before the heavy imports.
"""

from __future__ import annotations

from importlib import metadata


def package_versions(*packages: str) -> dict[str, str | None]:
    """Each package's installed release, None where it is absent."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
