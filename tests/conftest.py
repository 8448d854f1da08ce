"""Shared, generic test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _find_real_data() -> Path | None:
    """shared/data/real beside the repository, else in any folder above it."""
    for base in (REPO.parent, *REPO.parents):
        candidate = base / "shared" / "data" / "real"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """Folder of the real bright-field yeast stacks (test skipped when absent)."""
    found = _find_real_data()
    if found is None:
        pytest.skip("shared/data/real not found")
    return found


@pytest.fixture(scope="session")
def real_stack_paths(real_data_dir: Path) -> dict[str, Path]:
    """The two real bright-field z-stacks (34 planes, 0.3 um), by folder name."""
    return {
        "bfseg_pombe": real_data_dir / "bfseg_pombe" / "BF_zstack_34x0.3um.tif",
        "bfautofocus_pombe": real_data_dir / "bfautofocus_pombe" / "BF_zstack_0.3um.tif",
    }


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny tensors: one torch thread avoids OpenMP oversubscription on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
