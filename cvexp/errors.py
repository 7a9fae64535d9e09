"""The one exception type for problems a user can fix."""


class UserError(Exception):
    """A problem caused by the user's input; the message is one sentence that names the fix."""
