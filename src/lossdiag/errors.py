"""Errors caused by what the user gave us (data, config, paths).

Entry points print them as one line naming the problem and the fix, instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's input; ``str(err)`` says what is wrong and how to fix it."""


def user_error_cause(err: BaseException) -> UserError | None:
    """The :class:`UserError` ``err`` is, or was raised from (``hydra.utils.instantiate`` wraps what a config
    node's constructor raises), if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__  # explicit chaining only: an error raised while handling one is its own
    return None
