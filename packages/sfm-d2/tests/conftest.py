"""Shared fixtures. Importing sfm_d2 here imports detectron2 at collection time, so the tests-d2
session fails (never skips) when detectron2 is missing (the issue: a skipped d2 test is a failure).
"""

from __future__ import annotations

import pytest
from detectron2.config import CfgNode, get_cfg

import sfm_d2


@pytest.fixture
def cfg() -> CfgNode:
    """detectron2's defaults plus every key of :func:`sfm_d2.add_sfm_config`."""
    return sfm_d2.add_sfm_config(get_cfg())
