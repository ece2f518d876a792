"""The one error type of ``catalog``: bad input, named with what was searched and what was found;
and how to read what a library raised underneath (``error_chain``), which flows/ reads the same way."""

from __future__ import annotations

from collections.abc import Iterator


class CatalogError(ValueError):
    """A region, date, catalog or scene problem that the user can fix; the message says how."""


def error_chain(err: BaseException | None) -> Iterator[BaseException]:
    """``err``, then the exceptions it was raised from or during: where a library's own words are."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__
