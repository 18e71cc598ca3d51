"""Shared fixtures: the promctl binary and the data the tests use (installed by
scripts/test-training.sh; a missing prerequisite is an error, never a skip)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def promctl() -> str:
    path = os.environ.get("PROMCTL") or shutil.which("promctl")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError("set PROMCTL to a built promctl (cargo build --release -p prom-daemon)")
    return path


@pytest.fixture(scope="session")
def fashion_dir() -> str:
    if not os.path.exists(os.path.join(FASHION, "t10k-labels-idx1-ubyte.gz")):
        raise RuntimeError(f"{FASHION} missing: apt-get install dataset-fashion-mnist")
    return FASHION


@pytest.fixture(scope="session")
def photos_dir() -> str:
    path = os.environ.get("PROM_PHOTOS", "")
    if not os.path.isdir(path):
        raise RuntimeError("set PROM_PHOTOS to foolbox's data folder (scripts/test-training.sh)")
    return path
