"""User-facing errors: each carries one sentence that names the problem; the CLI prints it."""


class TrojanscopeError(Exception):
    """Bad input or an unusable artifact; the message is shown to the user as is."""


class UnknownNameError(TrojanscopeError):
    """A plug-in name that is not registered."""


class ConfigError(TrojanscopeError):
    """A parameter value that fails validation."""


class CatalogError(TrojanscopeError):
    """A missing, unwritable or inconsistent catalog."""


class NoCatalogError(CatalogError):
    """No catalog where one was asked for (nothing to open, nothing refused)."""


class CorruptArtifactError(TrojanscopeError):
    """A stored file whose content does not match its hash or cannot be parsed."""
