import pytest

from pycontainerd import identifiers
from pycontainerd.errdefs import InvalidArgument


@pytest.mark.parametrize("name", ["default", "k8s.io", "a", "A-b_c.d9", "0", "x" * 76, "a.1"])
def test_valid(name: str) -> None:
    identifiers.validate(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "identifier must not be empty: invalid argument"),
        ("x" * 77, f'identifier "{"x" * 77}" greater than maximum length (76 characters)'),
        ("bad name", 'identifier "bad name" must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$'),
        ("-a", None),
        ("a-", None),
        ("a..b", None),
        ("a/b", None),
        ("é", None),
        ("a\n", None),
    ],
)
def test_invalid(name: str, message: str | None) -> None:
    with pytest.raises(InvalidArgument) as info:
        identifiers.validate(name)
    if message:
        assert str(info.value).startswith(message)


def test_label_size() -> None:
    identifiers.validate_label("k", "v" * 4095)
    with pytest.raises(InvalidArgument, match="greater than maximum size"):
        identifiers.validate_label("k", "v" * 4096)
