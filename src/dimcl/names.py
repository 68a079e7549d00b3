"""The one "did you mean" of every error about a name (recipe, dataset, split, backbone, method, config key)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: object, choices: Iterable[str], prefix: str = "") -> str:
    """`` Did you mean '<prefix><closest>'?`` for the accepted name closest to ``name``; '' when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ""
