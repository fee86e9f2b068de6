from __future__ import annotations

import pytest

from wrenn.protocol import errors


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (errors.Invalid, 400),
        (errors.Unauthenticated, 401),
        (errors.Forbidden, 403),
        (errors.NotFound, 404),
        (errors.Conflict, 409),
        (errors.Exhausted, 429),
        (errors.Unavailable, 503),
        (errors.Internal, 500),
    ],
)
def test_error_kinds_round_trip_through_their_body(cls: type[errors.WrennError], status: int) -> None:
    err = cls("boom")
    body = err.to_body()
    assert body == {"code": status, "message": "boom"}
    rebuilt = errors.error_for_status(int(str(body["code"])), str(body["message"]))
    assert type(rebuilt) is cls
    assert rebuilt.message == "boom"


def test_unknown_status_becomes_internal() -> None:
    assert isinstance(errors.error_for_status(418, "teapot"), errors.Internal)
