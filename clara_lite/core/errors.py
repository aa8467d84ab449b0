"""clara_lite's own errors: one base, each kind with a stable ``code`` and the exit status the CLI returns.

Every kind also stays the built-in it always was (a :class:`DataError` is a ``ValueError``, a lock an
``OSError``), so callers that catch those keep working. Scripts and tests tell errors apart by type or
``code``, not by message wording; the message is for people (it names the file, line, field or option).

    status  codes
    2       bad_data, bad_settings, bad_recipe, bad_run_record, run_error, unknown_model, hub, export,
            index_folder, unsafe_zip, manifest, generator, endpoint (input or setup to fix: the message says
            what)
    3       diverged (non-finite steps in a row; the last good weights are saved)
    4       out_of_memory (even one row at a time; the message lists what to change)
    5       run_locked (another trainer holds the run folder; the message names it)
    130     interrupted (Ctrl-C / SIGTERM after a checkpoint: rerun to resume)
"""

from __future__ import annotations


class ClaraError(Exception):
    """Base of clara_lite's errors."""

    code = "error"
    exit_status = 2


def exit_status(err: BaseException) -> int:
    """The CLI's exit status for ``err`` (2 for errors that are not clara_lite's own)."""
    return err.exit_status if isinstance(err, ClaraError) else 2
