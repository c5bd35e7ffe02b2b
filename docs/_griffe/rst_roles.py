"""A griffe extension for the API reference (mkdocs.yml): Sphinx roles in docstrings as inline code.

The package's docstrings name other objects the Sphinx way (``:func:`load_samples```,
``:class:`~lossdiag.functional.outputs.Evaluation```); Markdown would show the role's name as text. This
turns each into inline code, keeping only the last component when the target starts with ``~``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
