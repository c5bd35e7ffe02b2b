"""Numbers as JSON can hold them: the one conversion every ``to_dict`` uses."""

from __future__ import annotations

import math
from typing import Any


def json_ready(value: Any) -> Any:
    """Dicts and sequences recursively; tuples become lists and non-finite floats ``None`` (JSON has no nan)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
