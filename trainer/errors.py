"""Errors a user can cause and fix.

The command line prints the message of a `UserError` as one sentence and exits with status 2,
without a traceback. Library code raises them with a message that names the input and the fix.
"""

from __future__ import annotations


class UserError(Exception):
    """An input problem the user can fix; the message names the input and the fix."""


class ConfigError(UserError, ValueError):
    """A `TrainConfig` value that is out of range or not one of the allowed choices."""


class DataError(UserError):
    """A dataset that cannot be read or used as given (path, CSV, image, class counts)."""


class ExportError(UserError):
    """An export that cannot be built or loaded; the message names the file or study and the fix.

    The one base of the export's errors: `search.export.candidates.NothingToExport` (no trial to
    build from) and `search.export.onnx_model.OnnxExportError` (an unusable ensemble.onnx).
    """
