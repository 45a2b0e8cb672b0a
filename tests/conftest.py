"""Fixtures shared by every test folder (helpers that tests import live in ``tests/helpers.py``)."""

from __future__ import annotations

import pytest

from tests.helpers import LAYER_KINDS


@pytest.fixture(params=LAYER_KINDS)
def kind(request) -> str:
    """Each LoRA layer kind of :func:`tests.helpers.make_layer` in turn."""
    return request.param
