"""The one error type of ``catalog``: bad input, named with what was searched and what was found."""


class CatalogError(ValueError):
    """A region, date, catalog or scene problem that the user can fix; the message says how."""
