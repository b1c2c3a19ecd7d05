"""Behaviour of the filter language, after containerd's filters package tests."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycontainerd.errdefs import InvalidArgument
from pycontainerd.sansio.filters import (
    ALWAYS,
    Adaptor,
    AllOf,
    AnyOf,
    Operator,
    Selector,
    adapt_mapping,
    parse,
    parse_all,
    quote,
)


@dataclass(frozen=True)
class Record:
    name: str
    other: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def adaptor(self) -> Adaptor:
        return adapt_mapping({"name": self.name, "other": self.other}, self.labels)


CORPUS = [
    Record("foo", labels={"foo": "true"}),
    Record("bar"),
    Record("foo", labels={"foo": "present", "more complex label": "present"}),
    Record("bar", labels={"bar": "true"}),
    Record("fooer", labels={'more complex label with \\ and "': "present"}),
    Record("fooer", labels={'more complex label with \\ and ".post': "present"}),
    Record("baz", other="too complex, yo"),
    Record("bazo", other="abc"),
    Record("compound", labels={"foo": "omg_asdf.asdf-qwer"}),
]
EVERYTHING = list(range(len(CORPUS)))


def matching(filt: str) -> list[int]:
    f = parse(filt)
    return [i for i, rec in enumerate(CORPUS) if f.match(rec.adaptor())]


@pytest.mark.parametrize(
    ("filt", "expected"),
    [
        ("", EVERYTHING),
        ("name", EVERYTHING),
        ("labels.foo", [0, 2, 8]),
        ("labels.foo,name", [0, 2, 8]),
        ("labels.foo==true", [0]),
        ("labels.foo==omg_asdf.asdf-qwer", [8]),
        ("name==bar", [1, 3]),
        ("name!=bar", [0, 2, 4, 5, 6, 7, 8]),
        ("name==bar,labels.bar", [3]),
        ('other=="too complex, yo"', [6]),
        ("other~=[abc]+,name!=foo", [6, 7]),
        ("other~=/[abc]+/,name!=foo", [6, 7]),
        ("other~=/[abc]{1,2}/,name!=foo", [6, 7]),
        ('other~=/[abc]{0,1}"\\//,name!=foo', []),
        ("name==bar,labels.bar==true", [3]),
        ("name==bar,labels.bar==wrong", []),
        ('name==foo,labels."more complex label"', [2]),
        ('labels."more complex label with \\\\ and \\""==present', [4]),
        ('labels."more complex label with \\\\ and \\"".post==present', [5]),
        # Beyond containerd's table.
        ("  name == bar", [1, 3]),
        ("other!=abc", [0, 1, 2, 3, 4, 5, 6, 8]),  # absent fields differ from anything
        ("labels.foo~=^$", [1, 3, 4, 5, 6, 7]),  # absent fields match as ""
        ("other", [6, 7]),
        ("name~=^foo$", [0, 2]),
        ("name~=|^ba[rz]$|", [1, 3, 6]),
        ('name=="\\x66oo"', [0, 2]),
        ('name=="\\146oo"', [0, 2]),
        ('name=="\\u0066oo"', [0, 2]),
        ('"name"=="foo"', [0, 2]),
        ("name==foo,name==bar", []),
        ("name=='foo'", []),  # single quotes are not quotes, just value characters
    ],
)
def test_containerd_corpus(filt: str, expected: list[int]) -> None:
    assert matching(filt) == expected


def test_parse_all_is_or_of_and() -> None:
    f = parse_all(["name==bar,labels.bar", "other==abc"])
    assert [i for i, r in enumerate(CORPUS) if f.match(r.adaptor())] == [3, 7]
    assert isinstance(f, AnyOf)


@pytest.mark.parametrize("filters", [[], [""], ["name==nothing", ""]])
def test_parse_all_matches_everything(filters: list[str]) -> None:
    f = parse_all(filters)
    assert all(f.match(r.adaptor()) for r in CORPUS)


def test_empty_and_always() -> None:
    assert parse("") is ALWAYS
    assert parse_all([]) is ALWAYS
    assert ALWAYS.match(lambda path: ("", False))


def test_parse_all_rejects_bare_string() -> None:
    with pytest.raises(TypeError):
        parse_all("name==foo")


def test_parse_all_error_carries_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_all(["name==foo", "name==foo,"])
    assert str(info.value) == (
        "filters: parse error: [name==foo,]: expected field or quoted: invalid argument"
    )


def test_structure() -> None:
    f = parse('labels."a.b"==c,name,topic~=x')
    assert isinstance(f, AllOf)
    assert f.filters[:2] == (
        Selector(("labels", "a.b"), Operator.EQUAL, "c"),
        Selector(("name",), Operator.PRESENT),
    )
    assert f.filters[2] == Selector(("topic",), Operator.MATCHES, "x")


# --- errors ----------------------------------------------------------------------------

# containerd's exact messages (filter_test.go), which we reproduce.
CONTAINERD_ERRORS = [
    (
        "labels.|foo|==omg_asdf.asdf-qwer",
        "filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered",
    ),
    (
        'labels.?"more complex label with \\\\ and \\"".post==present',
        'filters: parse error: [labels. >|?|< "more complex label with \\\\ and \\"".post'
        "==present]: expected field or quoted",
    ),
    ("name==foo,", "filters: parse error: [name==foo,]: expected field or quoted"),
    ("labels.", "filters: parse error: [labels.]: expected field or quoted"),
    (
        "image~=,id?=?fbaq",
        "filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted",
    ),
    (
        "labels.ns/key==value",
        "filters: parse error: [labels.ns >|/|< key==value]: quoted literal not terminated",
    ),
    (
        "labels.key==/value",
        "filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated",
    ),
]


@pytest.mark.parametrize(("filt", "message"), CONTAINERD_ERRORS)
def test_containerd_error_messages(filt: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(filt)
    assert info.value.message == message
    assert str(info.value) == message + ": invalid argument"


@pytest.mark.parametrize(
    ("filt", "why"),
    [
        ("name==", "expected value or quoted"),
        ("name==x ", "unexpected input"),  # trailing space after a value
        ("name ", "expected an operator"),
        ("name ,other", "expected an operator"),
        ("name=bar", 'unsupported operator "="'),
        ("name===bar", 'unsupported operator "==="'),
        ("name== ==bar", "expected value or quoted"),
        ("==bar", "expected field or quoted"),
        (",name", "expected field or quoted"),
        ("name,,other", "expected field or quoted"),
        ("name..x", "expected field or quoted"),
        ("   ", "expected field or quoted"),
        ("labels.-x", "expected field or quoted"),
        ("labels.'x'", "expected field or quoted"),
        ("name==x y", "unexpected input"),
        ('"name"x', "expected an operator"),
        ('labels."\\g"', "illegal escape sequence"),
        ('labels."\\xaz"', "illegal numeric escape sequence"),
        ('labels."a\nb"', "quoted literal not terminated"),
        ('labels."abc', "quoted literal not terminated"),
        ('labels."abc\\', "illegal escape sequence"),
        ('name=="\\777"', "unquoting failed"),
        ('name=="\\U00110000"', "unquoting failed"),
        ('name=="\\/"', "illegal escape sequence"),
        ("name==|x|", "invalid quote encountered"),
        ("name!=/x/", "invalid quote encountered"),
        ("topic==/tasks/exit", "invalid quote encountered"),
        ("foo\x00bar", "unexpected null"),
        ('name=="a\x00"', "unexpected null"),
        ("name==\ufffd", "rune error"),
        ("name==\udc80", "rune error"),
        ("name~=[", "invalid regular expression"),
        ("name~=a(", "invalid regular expression"),
        ("name~=*", "invalid regular expression"),
        ("name~=(?=a)", "invalid regular expression"),  # lookahead: not RE2
        ("name~=(?<!a)b", "invalid regular expression"),
        ("name~=(a)\\1", "invalid regular expression"),  # backreference: not RE2
        ("name~=a*+", "invalid regular expression"),  # possessive: not RE2
        ("name~=a{1001}", "invalid regular expression"),
        ("name~=\\pL", "invalid regular expression"),
        ("name~=\\Z", "invalid regular expression"),
        ("name~=\\e", "invalid regular expression"),
        ("name~=[[:nope:]]", "invalid regular expression"),
        ("name~=[z-a]", "invalid regular expression"),
        ('name~="\\xff"', "invalid regular expression"),  # not UTF-8
    ],
)
def test_parse_errors(filt: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(filt)
    assert info.value.message.startswith("filters: parse error: [")
    assert why in info.value.message


def test_error_points_at_offending_character() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse("name==foo,other=bar")
    assert info.value.message == (
        'filters: parse error: [name==foo,other >|=|< bar]: unsupported operator "="'
    )


def test_selector_rejects_bad_regex() -> None:
    with pytest.raises(InvalidArgument):
        Selector(("name",), Operator.MATCHES, "(")


# --- typical containerd usages -----------------------------------------------------------


def envelope(topic: str, namespace: str) -> Adaptor:
    return adapt_mapping({"topic": topic, "namespace": namespace})


@pytest.mark.parametrize(
    ("filt", "topic", "namespace", "expected"),
    [
        ('topic~="/namespaces/"', "/namespaces/create", "default", True),
        ('topic~="/namespaces/"', "/tasks/exit", "default", False),
        ("namespace==x", "/tasks/exit", "x", True),
        ("namespace==x", "/tasks/exit", "xy", False),
        ('topic=="/tasks/exit",namespace==default', "/tasks/exit", "default", True),
        ('topic=="/tasks/exit",namespace==default', "/tasks/exit", "k8s.io", False),
        ('topic=="/tasks/exit",namespace==default', "/tasks/start", "default", False),
        ("topic~=|^/tasks/|", "/tasks/oom", "default", True),
        ("topic~=/^\\/tasks\\//", "/tasks/oom", "default", True),
        ("namespace", "/x", "", False),
    ],
)
def test_event_filters(filt: str, topic: str, namespace: str, expected: bool) -> None:
    assert parse(filt).match(envelope(topic, namespace)) is expected


def test_image_name_and_dotted_labels() -> None:
    f = parse(r"name~=^docker\.io/")
    assert f.match(adapt_mapping({"name": "docker.io/library/busybox:latest"}))
    assert not f.match(adapt_mapping({"name": "dockerxio/library/busybox"}))
    assert not f.match(adapt_mapping({"name": "ghcr.io/docker.io/x"}))

    labels = {"a.b": "c", "containerd.io/gc.root": ""}
    rec = adapt_mapping({"name": "n"}, labels)
    assert parse('labels."a.b"==c').match(rec)
    assert parse("labels.a.b==c").match(rec)  # joined with "." as containerd does
    assert parse('labels."containerd.io/gc.root"').match(rec)  # empty label is present
    assert not parse('labels."containerd.io/gc.root"==x').match(rec)
    assert not parse("labels.a").match(rec)


def test_adapt_mapping_extra_maps_and_nested_fields() -> None:
    rec = adapt_mapping(
        {"name": "img", "target.digest": "sha256:abc", "empty": ""},
        annotations={"org.opencontainers.image.ref.name": "latest"},
    )
    assert parse("target.digest~=^sha256:").match(rec)
    assert parse('annotations."org.opencontainers.image.ref.name"==latest').match(rec)
    assert not parse("labels.x").match(rec)
    assert not parse("empty").match(rec)
    assert rec(()) == ("", False)


# --- RE2 semantics -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("\\d", "\u0663", False),  # RE2 \d is ASCII only
        ("\\d", "7", True),
        ("^\\w+$", "caf\u00e9", False),
        ("\\s", "\u3000", False),
        ("[^\\d]", "5", False),
        ("[\\D]", "a", True),
        ("a$", "a\n", False),  # RE2 $ is end of text
        ("(?m)a$", "a\nb", True),
        ("a\\z", "a", True),
        ("^[[:alpha:]]+$", "abc", True),
        ("^[[:^digit:]]+$", "abc", True),
        ("^[[:^digit:]]+$", "ab1", False),
        ("\\x{41}\\x42\\101", "ABA", True),
        ("\\Q.*\\E", "a.*b", True),
        ("\\Q.*\\E", "ab", False),
        ("a(?i)b|c", "aB", True),
        ("a(?i)b|c", "C", True),  # the flag runs to the end of the group, across "|"
        ("(?i)ABC", "xabcx", True),
        ("(?s:a.b)", "a\nb", True),
        ("a.b", "a\nb", False),
        ("x{,2}", "x{,2}", True),  # not a repeat in RE2: literal braces
        ("\\bfoo\\b", "\u00e9foo", True),  # ASCII word boundary
        ("a*?b", "aab", True),
        ("[]a]", "]", True),
        ("[a-]", "-", True),
        ("[&&]", "&", True),
        ("(?P<n>a)b", "ab", True),
        ("\\_\\ \\#", "_ #", True),
    ],
)
def test_re2_semantics(pattern: str, value: str, expected: bool) -> None:
    f = parse("f~=" + quote(pattern))
    assert f.match(lambda path: (value, True)) is expected


# --- properties ---------------------------------------------------------------------------

GRAMMAR_CHARS = list("abz_09.,=!~\"/|\\' \t\nxuU[]()*+?{}^$\x00\ufffd\u00e9\u3000")
filter_text = st.text(alphabet=st.sampled_from(GRAMMAR_CHARS) | st.characters(), max_size=40)


def _check_parse(text: str) -> None:
    try:
        f = parse(text)
    except InvalidArgument as exc:
        assert exc.message.startswith("filters: ")
        return
    f.match(lambda path: ("value", True))
    f.match(lambda path: ("", False))


@given(st.text())
def test_parse_only_raises_invalid_argument(text: str) -> None:
    _check_parse(text)


@given(filter_text)
def test_parse_grammar_soup_only_raises_invalid_argument(text: str) -> None:
    _check_parse(text)


@given(st.sampled_from(["name~=", "name~=/", "name~=|", 'name~="']), filter_text)
def test_regex_soup_only_raises_invalid_argument(prefix: str, text: str) -> None:
    _check_parse(prefix + text)


valid_text = st.text(st.characters(codec="utf-8"))
field_name = st.from_regex(r"[A-Za-z0-9_]+", fullmatch=True)


@given(
    st.lists(st.one_of(field_name, valid_text), min_size=1, max_size=4),
    st.sampled_from(["==", "!="]),
    valid_text,
)
def test_quoted_round_trip(path: list[str], op: str, value: str) -> None:
    text = ".".join(quote(p) for p in path) + op + quote(value)
    f = parse(text)
    assert f == AllOf((Selector(tuple(path), Operator(op), value),))
    is_equal = op == "=="
    assert f.match(lambda p: (value, True)) is is_equal
    assert f.match(lambda p: (value + "x", True)) is not is_equal
    assert f.match(lambda p: (value[:-1], True)) is (not is_equal if value else is_equal)


@given(field_name, field_name)
def test_bare_round_trip(name: str, value: str) -> None:
    f = parse(f"{name}=={value}")
    assert f == AllOf((Selector((name,), Operator.EQUAL, value),))


@given(valid_text, valid_text, valid_text)
def test_escaped_regex_matches_literally(value: str, before: str, after: str) -> None:
    f = parse("f~=" + quote(re.escape(value)))
    assert f.match(lambda p: (before + value + after, True))


def test_quote_escapes() -> None:
    assert quote('a"b\\c\n\x01\ufffd') == '"a\\"b\\\\c\\n\\x01\\ufffd"'
    with pytest.raises(ValueError):
        quote("\udc80")
