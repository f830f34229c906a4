"""Bad ranges of image IDs, and words each refusal's detail holds: the one corpus that the search
service's `vector-ids` and `neighbors`, the catalog's `index-states` and the gateway's `verify` and
`duplicates` are held to, since all of them check a range with libs/common's validation contract;
and the bad similarity thresholds of a near-duplicate scan (`neighbors`, `duplicates`)."""

from __future__ import annotations

from typing import Any

from medsearch_common.validation import MAX_ID_SPAN

# As query parameters (search, catalog): (parameters, words of the detail).
BAD_QUERY_RANGES: list[tuple[dict[str, str], str]] = [
    ({}, "from is missing"),
    ({"from": "0"}, "to is missing"),
    ({"from": "-1", "to": "5"}, "from must be a whole number"),
    ({"from": "one", "to": "5"}, "from must be a whole number"),
    ({"from": "1.5", "to": "5"}, "from must be a whole number"),
    ({"from": "0", "to": "+5"}, "to must be a whole number"),
    ({"from": "0", "to": "\u0665"}, "to must be a whole number"),  # an Arabic-Indic five
    ({"from": "10", "to": "10"}, "to (10) must be greater than from (10)"),
    ({"from": "10", "to": "5"}, "to (5) must be greater than from (10)"),
    ({"from": "0", "to": str(MAX_ID_SPAN + 1)}, f"spans {MAX_ID_SPAN + 1} IDs; the limit is {MAX_ID_SPAN}"),
    ({"from": "0", "to": str(2**63)}, "to must be between 0 and 9223372036854775807"),
    ({"from": "0", "to": "5", "limit": "3"}, "unknown parameter(s): limit"),
]

# As a JSON body (the gateway): (body, words of the detail).
BAD_JSON_RANGES: list[tuple[Any, str]] = [
    ({"to": 5}, "from must be an integer, got null"),
    ({"from": 0}, "to must be an integer, got null"),
    ({"from": -1, "to": 5}, "from must be between 0 and"),
    ({"from": "0", "to": 5}, 'from must be an integer, got a string "0"'),
    ({"from": 0.0, "to": 5}, "from must be an integer, got a number"),
    ({"from": True, "to": 5}, "from must be an integer, got a boolean"),
    ({"from": 10, "to": 10}, "to (10) must be greater than from (10)"),
    ({"from": 0, "to": MAX_ID_SPAN + 1}, f"spans {MAX_ID_SPAN + 1} IDs; the limit is {MAX_ID_SPAN}"),
    ({"from": 0, "to": 5, "repair": "yes"}, "repair must be true or false"),
    ({"from": 0, "to": 5, "fix": True}, "unknown field(s): fix"),
    ([0, 5], "a JSON object"),
]

# A near-duplicate threshold as JSON: (value, words of the detail). Each names `threshold`.
BAD_THRESHOLDS: list[tuple[Any, str]] = [
    (0, "threshold must be greater than 0 and at most 1, got 0"),
    (0.0, "threshold must be greater than 0 and at most 1, got 0.0"),
    (-0.5, "threshold must be greater than 0 and at most 1, got -0.5"),
    (1.5, "threshold must be greater than 0 and at most 1, got 1.5"),
    ("x", 'threshold must be a number greater than 0 and at most 1, got a string "x"'),
    ("0.9", 'threshold must be a number greater than 0 and at most 1, got a string "0.9"'),
    (True, "threshold must be a number greater than 0 and at most 1, got a boolean"),
    ([0.9], "threshold must be a number greater than 0 and at most 1, got a list"),
]


def range_rows_for(fields: set[str]) -> list[tuple[Any, str]]:
    """BAD_JSON_RANGES for an endpoint whose body holds `fields` beside from and to: the rows
    about another endpoint's own fields (verify's `repair`) left out."""
    return [
        (body, words)
        for body, words in BAD_JSON_RANGES
        if not isinstance(body, dict) or set(body) <= {"from", "to", "fix"} | fields
    ]
