import grpc
import pytest

from pycontainerd import errdefs
from pycontainerd.errdefs_grpc import from_grpc, to_grpc


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errdefs.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errdefs.NotFound, grpc.StatusCode.NOT_FOUND),
        (errdefs.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (errdefs.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errdefs.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errdefs.NotImplemented_, grpc.StatusCode.UNIMPLEMENTED),
        (errdefs.Unknown, grpc.StatusCode.UNKNOWN),
    ],
)
def test_round_trip_keeps_kind_and_message(
    cls: type[errdefs.ContainerdError], code: grpc.StatusCode
) -> None:
    err = cls('namespace "x"')
    got_code, message = to_grpc(err)
    assert got_code == code
    assert message == f'namespace "x": {cls.kind}'
    back = from_grpc(FakeRpcError(got_code, message))
    assert type(back) is cls
    assert str(back) == message
    assert back.message == 'namespace "x"'


def test_message_is_containerd_shaped() -> None:
    assert str(errdefs.NotFound()) == "not found"
    assert str(errdefs.NotFound("content sha256:ab")) == "content sha256:ab: not found"
    # a message that already ends with the kind is not doubled
    assert str(errdefs.NotFound("x: not found")) == "x: not found"


def test_unmapped_codes_are_unknown() -> None:
    err = from_grpc(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big"))
    assert isinstance(err, errdefs.Unknown)
    assert to_grpc(TimeoutError())[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert to_grpc(ValueError("boom")) == (grpc.StatusCode.UNKNOWN, "boom")
