"""Shared fixtures. Global module hooks are process-wide, so every test leaves them as
it found them."""

from __future__ import annotations

import pytest
from torch.nn.modules import module as _module_mod

from hookwrap._txn import GLOBAL_HOOK_DICTS


@pytest.fixture(autouse=True)
def _isolate_global_hooks():
    saved = {name: list(getattr(_module_mod, name).items()) for name in GLOBAL_HOOK_DICTS}
    yield
    for name, items in saved.items():
        table = getattr(_module_mod, name)
        table.clear()
        table.update(items)
