"""The one exception type a user sees.

Every error caused by the user's input (model file, calibration data, shapes, flags, boards)
is raised as :class:`IntqError` where the bad input is first seen, with the file, layer or
tensor name in the message. The CLI prints its message as one line and exits non-zero; any
other exception is a bug in tvm-intq.
"""


class IntqError(Exception):
    """A problem with the user's input, stated in one line that names it."""
