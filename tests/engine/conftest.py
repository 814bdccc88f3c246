"""Fixtures shared by the engine tests."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from testutils import CIFAR_JPEG, need


@pytest.fixture(params=["generated", "cifar"])
def image(request, tmp_path):
    """A real image file: a CIFAR-10 test JPEG (when ../shared is there), or a generated wide RGBA PNG."""
    if request.param == "cifar":
        return need(CIFAR_JPEG / "test" / "cat" / "0000.jpg")
    yy, xx = np.mgrid[0:23, 0:37]
    rgba = np.stack([xx * 7 % 256, yy * 11 % 256, (xx * yy) % 256, np.full_like(xx, 200)], -1).astype(np.uint8)
    path = tmp_path / "wide.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path
