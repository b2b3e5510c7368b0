"""Exceptions raised by the library; only ``pipeline.cli.main`` turns them into exit codes."""


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class InputError(PipelineError, ValueError):
    """Bad user input: a missing folder, an unreadable frame, an invalid option.

    The command line reports its message on one line and exits with status 2.
    """
