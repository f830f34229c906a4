"""Unit tests of the search service's pure logic: filters to Milvus expressions, string literals,
attribute normalization, and collection names made from model IDs (no Milvus needed)."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from medsearch_search.errors import InvalidRequest
from medsearch_search.filters import (
    UNKNOWN_AGE,
    Attributes,
    SearchFilter,
    findings_key,
    parse_attributes,
    parse_filter,
    quote,
)
from medsearch_search.store import collection_name, model_id_of

# 32 different findings of 256 four-byte characters: each fits, together their key does not.
LONG_FINDINGS = ["🫁" * 255 + chr(0x1F600 + i) for i in range(32)]
MASS = "4d617373"  # "Mass".encode().hex()
NODULE = "4e6f64756c65"  # "Nodule".encode().hex()

# -- SearchFilter.expression() -----------------------------------------------------------------------------

EXPRESSIONS: list[tuple[str, SearchFilter, str]] = [
    ("nothing", SearchFilter(), ""),
    ("dataset", SearchFilter(dataset=("nih",)), '(dataset in ["nih"])'),
    ("datasets", SearchFilter(dataset=("nih", "hannover")), '(dataset in ["nih", "hannover"])'),
    ("sex", SearchFilter(sex=("F", "O")), '(sex in ["F", "O"])'),
    ("view_position", SearchFilter(view_position=("PA",)), '(view_position in ["PA"])'),
    ("patient_id", SearchFilter(patient_id=("p1", "p2")), '(patient_id in ["p1", "p2"])'),
    ("patient_id quoted", SearchFilter(patient_id=('p"1',)), '(patient_id in ["p\\"1"])'),
    ("age min", SearchFilter(age_min=40), "(age >= 40)"),
    ("age min 0", SearchFilter(age_min=0), "(age >= 0)"),
    # "at most 70" must not admit the unknown age, stored as -1.
    ("age max", SearchFilter(age_max=70), f"(age <= 70) and (age != {UNKNOWN_AGE})"),
    ("age range", SearchFilter(age_min=40, age_max=70), "(age >= 40) and (age <= 70)"),
    ("findings any", SearchFilter(findings_any=("Mass",)), f'((findings_key like "%|{MASS}|%"))'),
    (
        "findings any of two",
        SearchFilter(findings_any=("Mass", "Nodule")),
        f'((findings_key like "%|{MASS}|%") or (findings_key like "%|{NODULE}|%"))',
    ),
    (
        "findings all",
        SearchFilter(findings_all=("Mass", "Nodule")),
        f'((findings_key like "%|{MASS}|%") and (findings_key like "%|{NODULE}|%"))',
    ),
    ("findings none", SearchFilter(findings_none=("Mass",)), f'(not ((findings_key like "%|{MASS}|%")))'),
    (
        "findings none of two",
        SearchFilter(findings_none=("Mass", "Nodule")),
        f'(not ((findings_key like "%|{MASS}|%") or (findings_key like "%|{NODULE}|%")))',
    ),
    ("exclude_ids", SearchFilter(exclude_ids=(12, 7)), "(id not in [12, 7])"),
    ("exclude_patients", SearchFilter(exclude_patients=("p1",)), '(patient_id not in ["p1"])'),
    (
        "everything, in a fixed order",
        SearchFilter(
            dataset=("nih",),
            sex=("F",),
            view_position=("PA",),
            patient_id=("p2",),
            age_min=40,
            age_max=70,
            findings_any=("Mass",),
            findings_all=("Nodule",),
            findings_none=("Mass",),
            exclude_ids=(12,),
            exclude_patients=("p1",),
        ),
        '(dataset in ["nih"]) and (sex in ["F"]) and (view_position in ["PA"]) and (patient_id in ["p2"])'
        " and (age >= 40) and (age <= 70)"
        f' and ((findings_key like "%|{MASS}|%"))'
        f' and ((findings_key like "%|{NODULE}|%"))'
        f' and (not ((findings_key like "%|{MASS}|%")))'
        ' and (id not in [12]) and (patient_id not in ["p1"])',
    ),
]


@pytest.mark.parametrize(("flt", "expected"), [c[1:] for c in EXPRESSIONS], ids=[c[0] for c in EXPRESSIONS])
def test_each_filter_field_becomes_its_expression(flt: SearchFilter, expected: str) -> None:
    assert flt.expression() == expected


def test_the_documented_filter_example_parses_to_its_expression() -> None:
    flt = parse_filter(
        {
            "dataset": ["nih"],
            "sex": ["F"],
            "view_position": ["PA"],
            "age": {"min": 40, "max": 70},
            "findings": {"any": ["Effusion"], "none": ["Mass"]},
            "exclude_ids": [12],
            "exclude_patients": ["p1"],
        }
    )
    effusion = b"Effusion".hex()
    assert flt.expression() == (
        '(dataset in ["nih"]) and (sex in ["F"]) and (view_position in ["PA"])'
        " and (age >= 40) and (age <= 70)"
        f' and ((findings_key like "%|{effusion}|%"))'
        f' and (not ((findings_key like "%|{MASS}|%")))'
        ' and (id not in [12]) and (patient_id not in ["p1"])'
    )


# -- quote() and the findings key ---------------------------------------------------------------------------


def unquote(literal: str) -> str:
    """Read a Milvus string literal back as Milvus's lexer does: it must end exactly at the last character."""
    assert literal.startswith('"'), literal
    chars, i = [], 1
    while i < len(literal):
        char = literal[i]
        if char == "\\":
            assert i + 1 < len(literal), f"a dangling backslash in {literal!r}"
            chars.append(literal[i + 1])
            i += 2
        elif char == '"':
            assert i == len(literal) - 1, (
                f"the literal {literal!r} closes early, at {i}: the rest would be code"
            )
            return "".join(chars)
        else:
            chars.append(char)
            i += 1
    raise AssertionError(f"the literal {literal!r} never closes")


HOSTILE = [
    "",
    '"',
    "\\",
    '\\"',
    '"\\',
    '" or 1==1',
    '") or id > 0 or ("',
    '\\" or 1==1 or \\"',
    'p1" or patient_id != "',
    "]) or true or ([",
    "' or ''='",
    "%|_|%",
    "ünïcødé 患者 🫁",
    "\u2028\u2029\u200b\ufeff",
    '\\\\\\"""',
    "x" * 256,
]
ALPHABET = [
    '"',
    "\\",
    "'",
    "a",
    "Z",
    "0",
    " ",
    "%",
    "_",
    "|",
    "(",
    ")",
    "[",
    "]",
    ",",
    "é",
    "患",
    "🫁",
    "\u00a0",
]


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(ALPHABET, k=rng.randint(1, 24))) for _ in range(count)]


def test_quote_escapes_quotes_and_backslashes() -> None:
    assert quote("plain") == '"plain"'
    assert quote('a"b') == '"a\\"b"'
    assert quote("a\\b") == '"a\\\\b"'
    assert quote('\\"') == '"\\\\\\""'
    assert quote("患者 🫁") == '"患者 🫁"'


@pytest.mark.parametrize("text", HOSTILE)
def test_a_quoted_string_reads_back_as_itself_and_nothing_more(text: str) -> None:
    assert unquote(quote(text)) == text


def test_random_strings_of_quotes_backslashes_and_unicode_read_back_as_themselves() -> None:
    for text in random_texts(3000, seed=1):
        assert unquote(quote(text)) == text, text


@pytest.mark.parametrize("text", ["a\x00b", "line\nbreak", "tab\there", "\x1b[31m", "del\x7f"])
def test_quote_refuses_control_characters(text: str) -> None:
    with pytest.raises(InvalidRequest, match="control characters"):
        quote(text)


def like_contains(key: str, expression: str) -> bool:
    """What `findings_key like "%|<hex>|%"` means: the key holds that text."""
    match = re.fullmatch(r'\(findings_key like "%(\|[0-9a-f]*\|)%"\)', expression)
    assert match is not None, f"not a plain, wildcard-free LIKE: {expression}"
    return match[1] in key


@pytest.mark.parametrize("seed", range(20))
def test_a_finding_matches_the_key_exactly_when_the_image_has_it(seed: int) -> None:
    rng = random.Random(seed)
    pool = [*random_texts(12, seed=seed + 100), "Mass", "Mas", "ass", "a", "aa", "é", "e\u0301"]
    findings = tuple(dict.fromkeys(rng.sample(pool, k=rng.randint(0, 6))))
    key = findings_key(findings)
    for candidate in pool:
        (expression,) = SearchFilter(findings_any=(candidate,)).expression()[1:-1].split(" or ")
        assert like_contains(key, expression) == (candidate in findings), (candidate, findings)


# -- parse_attributes() and Attributes ----------------------------------------------------------------------


def test_missing_attributes_are_sentinels_that_come_back_as_null() -> None:
    for value in (
        None,
        {},
        dict.fromkeys(["dataset", "patient_id", "sex", "age", "view_position", "findings"]),
    ):
        attributes = parse_attributes(value, "attributes")
        assert attributes == Attributes()
        row = attributes.to_row()
        assert {k: row[k] for k in ("dataset", "patient_id", "sex", "age", "view_position", "findings")} == {
            "dataset": "",
            "patient_id": "",
            "sex": "",
            "age": UNKNOWN_AGE,
            "view_position": "",
            "findings": [],
        }
        assert attributes.to_json() == {
            "dataset": None,
            "patient_id": None,
            "sex": None,
            "age": None,
            "view_position": None,
            "findings": [],
        }


def test_attributes_are_normalized() -> None:
    attributes = parse_attributes(
        {
            "dataset": "  nih ",
            "patient_id": " p1",
            "sex": " f ",
            "age": 61,
            "view_position": "pa",
            "findings": ["Mass", "Nodule", " Mass ", "Mass", "mass"],
        },
        "attributes",
    )
    assert attributes == Attributes(
        dataset="nih",
        patient_id="p1",
        sex="F",
        age=61,
        view_position="PA",
        findings=("Mass", "Nodule", "mass"),
    )
    assert attributes.to_json() == {
        "dataset": "nih",
        "patient_id": "p1",
        "sex": "F",
        "age": 61,
        "view_position": "PA",
        "findings": ["Mass", "Nodule", "mass"],
    }


@pytest.mark.parametrize(("sent", "stored"), [("m", "M"), ("F", "F"), ("o", "O")])
def test_sex_is_upper_cased(sent: str, stored: str) -> None:
    assert parse_attributes({"sex": sent}, "a").sex == stored


def test_age_zero_is_known() -> None:
    attributes = parse_attributes({"age": 0}, "a")
    assert attributes.age == 0 and attributes.to_json()["age"] == 0


def test_a_row_reads_back_as_the_attributes_it_was_made_from() -> None:
    for value in (None, {"dataset": "d", "sex": "m", "age": 0, "findings": ["患者", 'a"b']}):
        attributes = parse_attributes(value, "a")
        row = attributes.to_row()
        assert row["findings_key"] == findings_key(attributes.findings)
        assert Attributes.from_row(row) == attributes


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("nih", "a must be an object, got a string"),
        ({"diagnosis": "x"}, "a has unknown field(s): diagnosis"),
        ({"sex": "X"}, "a.sex must be one of M, F, O or null"),
        ({"age": 131}, "a.age must be between 0 and 130"),
        ({"findings": ["f"] * 33}, "a.findings has 33 items; the limit is 32"),
        ({"findings": LONG_FINDINGS}, "a.findings are too long in all"),
    ],
)
def test_bad_attributes_name_the_field(value: Any, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_attributes(value, "a")
    assert words in str(refused.value)


# -- parse_filter() ------------------------------------------------------------------------------------------


def test_no_filter_is_the_empty_filter() -> None:
    assert parse_filter(None) == SearchFilter() == parse_filter({})
    assert parse_filter({}).expression() == ""


def test_filter_values_are_normalized() -> None:
    flt = parse_filter(
        {
            "dataset": [" nih "],
            "sex": ["f", " m "],
            "view_position": ["pa", "Ap"],
            "patient_id": ["p1"],
            "age": {"min": None, "max": 5},
            "findings": {"any": ["Mass"], "all": ["Nodule", "Mass"], "none": ["x"]},
            "exclude_ids": [3, 1],
            "exclude_patients": ["p9 "],
        }
    )
    assert flt == SearchFilter(
        dataset=("nih",),
        sex=("F", "M"),
        view_position=("PA", "AP"),
        patient_id=("p1",),
        age_min=None,
        age_max=5,
        findings_any=("Mass",),
        findings_all=("Nodule", "Mass"),
        findings_none=("x",),
        exclude_ids=(3, 1),
        exclude_patients=("p9",),
    )


def test_null_age_and_findings_filter_nothing() -> None:
    assert parse_filter({"age": None, "findings": None}) == SearchFilter()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ([], "filter must be an object, got a list"),
        ({"dataset": "nih"}, 'filter.dataset must be a list of strings, got a string "nih"'),
        ({"dataset": []}, "filter.dataset is empty"),
        ({"sex": ["x"]}, "filter.sex values must be among M, F, O, got 'X'"),
        ({"age": {"min": 5, "max": 4}}, "filter.age.min (5) is greater than filter.age.max (4)"),
        ({"findings": {"some": ["x"]}}, "filter.findings must be an object"),
        ({"exclude_ids": [0]}, "filter.exclude_ids[0] must be between 1 and 9223372036854775807"),
        ({"expression": "id > 0"}, "filter has unknown field(s): 'expression'"),
    ],
)
def test_bad_filters_name_the_field(value: Any, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_filter(value)
    assert words in str(refused.value)


# -- collection names --------------------------------------------------------------------------------------


def random_model_ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    first = "abcXYZ019"
    rest = "aZ9._-_-."
    return [rng.choice(first) + "".join(rng.choices(rest, k=rng.randint(0, 40))) for _ in range(count)]


MODEL_IDS = [
    "resnet50-random42-0b1c2d3e4f",
    "a.b-c_d",
    "a_b-c.d",
    "a-b.c_d",
    "a__b",
    "a_d",
    "a_h",
    "a_",
    "a.",
    "a-",
    "a._-",
    "a_-.",
    "0",
    "Z",
    "x" * 128,
    "a" + "._-" * 40,
]


def assert_reads_back(model_id: str) -> None:
    name = collection_name(model_id)
    assert re.fullmatch(r"medsearch_[A-Za-z0-9_]+", name), name
    assert len(name) <= 255
    assert model_id_of(name) == model_id, name


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_a_collection_name_reads_back_as_its_model_id(model_id: str) -> None:
    assert_reads_back(model_id)


def test_random_model_ids_read_back_from_their_names() -> None:
    for model_id in random_model_ids(2000, seed=5):
        assert_reads_back(model_id)


def test_model_ids_that_differ_only_in_dots_dashes_and_underscores_get_different_names() -> None:
    seps = "._-"
    model_ids = [f"a{x}b{y}c{z}d" for x in seps for y in seps for z in seps]
    model_ids += ["ab", "a_b", "a__b", "a___b", "a_db", "a_hb", "a.b", "a-b", "a_.b", "a._b"]
    names = [collection_name(model_id) for model_id in model_ids]
    assert len(set(names)) == len(model_ids)
    many = set(random_model_ids(2000, seed=6))
    assert len({collection_name(m) for m in many}) == len(many)


def test_a_model_id_whose_name_would_be_too_long_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="too long to name a Milvus collection"):
        collection_name("a" + "_" * 127)
    assert model_id_of(collection_name("a" * 128)) == "a" * 128


@pytest.mark.parametrize(
    "name",
    [
        "",
        "other",
        "medsearch",
        "Medsearch_a",
        "MEDSEARCH_a",
        "_medsearch_a",
        "xmedsearch_a",
        "medsearch_a_",
        "medsearch_a_x",
        "medsearch_a_b_d",
        "medsearch_a___",
    ],
)
def test_a_name_not_made_by_collection_name_is_foreign(name: str) -> None:
    assert model_id_of(name) is None


def test_findings_through_the_array_functions_for_servers_without_infix_like() -> None:
    flt = SearchFilter(findings_any=("Mass", 'a"b'), findings_all=("Nodule",), findings_none=("Effusion",))
    assert flt.expression("array") == (
        '(array_contains_any(findings, ["Mass", "a\\"b"]))'
        ' and (array_contains_all(findings, ["Nodule"]))'
        ' and (not array_contains_any(findings, ["Effusion"]))'
    )
    # Everything but findings is written the same way on both paths.
    plain = SearchFilter(dataset=("nih",), age_min=3)
    assert plain.expression("array") == plain.expression("key")
