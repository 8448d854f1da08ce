"""Versions of the software that produced a file: simulated days and trained weights record them, since
regenerated data and retrained weights differ in their low bits when numpy, scipy or torch change."""

from __future__ import annotations

from importlib import metadata

PACKAGES = ("microdeblur", "numpy", "scipy", "scikit-image", "tifffile", "torch")


def software_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package that is installed (absent ones are left out)."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
