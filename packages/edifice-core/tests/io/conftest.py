"""Set-up shared by the save/load tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def warm_meta_device() -> None:
    """Pay once, in set-up, for the ``torch._dynamo`` import that torch makes on the first meta-device op (1-2 s).

    ``edifice.load`` builds every model on the meta device; without this the first test would carry that import.
    """
    with torch.device("meta"):
        torch.nn.Embedding(2, 2)
