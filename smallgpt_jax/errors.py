"""One error type for user mistakes: the CLI prints its message on one line."""


class UserError(Exception):
    """A problem with the user's input (config, data, workdir, flags).

    Entry points catch it and print `error: <message>` with exit status 2,
    instead of a traceback from deep inside JAX.
    """
