"""Errors caused by what the user gave us (data, config, paths).

Entry points print them as one line naming the problem and the fix, instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's input; ``str(err)`` says what is wrong and how to fix it."""
