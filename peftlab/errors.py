"""Errors peftlab raises for bad input.

Every message names where the problem is (a file, a line, a config field) so the user can fix it
without reading a traceback. The CLI prints these as one line and exits with status 2.
"""

from __future__ import annotations


class PeftlabError(Exception):
    """Base class: a problem with the user's input, reported as one clear message."""


class ConfigError(PeftlabError):
    """A run config (YAML file or key=value override) is malformed, unknown or mistyped."""


class ConfigErrors(ConfigError):
    """Several errors of one config, reported together: ``errors`` holds each (one ``file:line: field:``
    message apiece) and the message is theirs, one per line. A ``ConfigError`` like any other."""

    def __init__(self, errors: list):
        self.errors = [one for e in errors for one in getattr(e, "errors", [e])]
        super().__init__("\n".join(str(e) for e in self.errors))


def gathered(errors: list) -> ConfigError:
    """The one error to raise for ``errors`` (at least one): itself when alone, else ``ConfigErrors``."""
    flat = [one for e in errors for one in getattr(e, "errors", [e])]
    return flat[0] if len(flat) == 1 else ConfigErrors(flat)


class DataError(PeftlabError):
    """A dataset file is unreadable, malformed, or yields an empty split."""


class ModelError(PeftlabError):
    """A model name or path cannot be resolved, or a method does not fit the model."""


class RunDirError(PeftlabError):
    """A run directory is missing, incomplete, or would overwrite a user's results."""
