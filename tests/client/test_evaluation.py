"""The figures of `medsearch eval` on tiny collections whose scores are worked out by hand."""

from __future__ import annotations

import json
from fractions import Fraction
from itertools import permutations
from typing import Any, cast

import pytest

from medsearch_client.evaluation import (
    RULES,
    EvaluationReport,
    LabelledImage,
    Ranking,
    Rule,
    average_precision_at_k,
    evaluate_rule,
    labels_of,
    modified_precision_at_k,
    near_duplicate_recall_at_1,
    precision_at_k,
    random_average_precision_at_k,
    random_modified_precision_at_k,
    random_precision_at_k,
    same_patient_recall,
)
from medsearch_client.report import render_markdown


def image(image_id: int, *labels: str, patient: str | None = "") -> LabelledImage:
    """An image of its own patient ("p<id>") unless told otherwise."""
    return LabelledImage(image_id, f"p{image_id}" if patient == "" else patient, frozenset(labels))


def rank(query_id: int, *ranked_ids: int) -> Ranking:
    return Ranking(query_id, ranked_ids)


# Query 1 (Effusion) has the pool {2, 3, 4, 5, 6}: N = 5, relevant {2, 3}: R = 2.
EFFUSION_SET = [
    image(1, "Effusion"),
    image(2, "Effusion"),
    image(3, "Effusion", "Mass"),
    image(4, "No Finding"),
    image(5, "No Finding"),
    image(6, "Mass"),
]

# Four images of A, two of B, each its own patient; A's queries find A first, B's find A first.
IMBALANCED_SET = [image(i, "A") for i in (1, 2, 3, 4)] + [image(i, "B") for i in (5, 6)]
IMBALANCED_RANKINGS = [
    rank(1, 2, 3),
    rank(2, 1, 3),
    rank(3, 1, 2),
    rank(4, 1, 2),
    rank(5, 1, 6),
    rank(6, 1, 5),
]


def test_hand_computed_precision_and_average_precision_for_one_query() -> None:
    # Ranking 4, 2, 5, 3, 6 has relevance [no, yes, no, yes, no].
    # P@1 = 0/1 = 0; P@5 = 2/5 = 0.4; P@10 = 2/10 = 0.2 (five ranks only, the rest are misses).
    # AP@1 = 0 / min(1, 2) = 0; AP@5 = AP@10 = (1/2) * (1/2 + 2/4) = 0.5.
    report = evaluate_rule(EFFUSION_SET, [rank(1, 4, 2, 5, 3, 6)], "any_finding", ks=(1, 5, 10), bootstrap=0)

    assert report.micro is not None and report.macro is not None
    assert {k: f.value for k, f in report.micro.precision.items()} == pytest.approx({1: 0, 5: 0.4, 10: 0.2})
    assert {k: f.value for k, f in report.micro.average_precision.items()} == pytest.approx(
        {1: 0, 5: 0.5, 10: 0.5}
    )
    assert report.macro == report.micro  # one query, one label
    # Random ranking of N = 5 with R = 2: P@1 = 2/5; P@10 = min(10, 5) * 2/5 / 10 = 0.2.
    assert report.micro.precision[1].baseline == pytest.approx(0.4)
    assert report.micro.precision[10].baseline == pytest.approx(0.2)
    assert report.micro.precision[5].low is None and report.micro.precision[5].high is None
    assert report.queries_scored == 1 and report.cleanup.dropped == 0


def test_ranking_shorter_than_k_counts_missing_ranks_as_misses() -> None:
    # Only image 2 came back: P@5 = 1/5 = 0.2; AP@5 = (1/2) * (1/1) = 0.5.
    report = evaluate_rule(EFFUSION_SET, [rank(1, 2)], "any_finding", ks=(5,), bootstrap=0)

    assert report.micro is not None
    assert report.micro.precision[5].value == pytest.approx(0.2)
    assert report.micro.average_precision[5].value == pytest.approx(0.5)


def test_label_class_smaller_than_k_is_normalised_by_min_k_r() -> None:
    # R = 2 < k = 5. A perfect ranking: AP@5 = (1/min(5, 2)) * (1/1 + 2/2) = 1, while the
    # plain P@5 cannot exceed 2/5.
    report = evaluate_rule(EFFUSION_SET, [rank(1, 2, 3, 4, 5, 6)], "any_finding", ks=(5,), bootstrap=0)

    assert report.micro is not None
    assert report.micro.average_precision[5].value == pytest.approx(1.0)
    assert report.micro.precision[5].value == pytest.approx(0.4)


def test_modified_precision_reaches_one_when_every_relevant_image_is_found() -> None:
    # single_label: image 3 (two labels) leaves the pool, so query 1 has R = 1 (image 2), N = 3.
    # Modified P@5 = 1 / min(5, 1) = 1; random: min(5, 3) * 1/3 / min(5, 1) = 1.
    report = evaluate_rule(EFFUSION_SET, [rank(1, 2, 4, 5, 6)], "single_label", ks=(5,), bootstrap=0)

    assert report.micro is not None
    assert report.micro.precision[5].value == pytest.approx(1.0)
    assert report.micro.precision[5].baseline == pytest.approx(1.0)


def test_query_without_any_relevant_image_is_skipped_and_counted() -> None:
    # Nodule (7) has no other Nodule image: R = 0, it cannot be scored.
    collection = [*EFFUSION_SET, image(7, "Nodule")]
    rankings = [rank(7, 1, 2, 3), rank(1, 2)]

    report = evaluate_rule(collection, rankings, "any_finding", ks=(1,), bootstrap=0)

    assert report.queries_ranked == 2
    assert report.queries_without_relevant == 1
    assert report.queries_scored == 1
    assert report.micro is not None and report.micro.precision[1].value == pytest.approx(1.0)
    assert [row.label for row in report.labels] == ["Effusion"]


def test_no_scored_query_gives_no_scores() -> None:
    report = evaluate_rule([image(1, "A"), image(2, "B")], [rank(1, 2)], "any_finding", bootstrap=0)

    assert report.micro is None and report.macro is None and report.labels == ()
    assert report.queries_without_relevant == 1


def test_single_label_rule_removes_multi_label_images_from_pool_and_rankings() -> None:
    collection = [image(1, "A"), image(2, "A"), image(3, "A", "B"), image(4, "B"), image(5, "B")]
    # Ranking 3, 4, 2, 5 for query 1.
    # any_finding: pool {2, 3, 4, 5}, R = 2 (2 and 3); relevance [yes, no, yes, no]: P@1 = 1.
    # single_label: 3 is removed; pool {2, 4, 5}, N = 3, R = 1; ranking 4, 2, 5 is
    # [no, yes, no]: modified P@1 = 0 / min(1, 1) = 0, AP@3 = (1/1) * (1/2) = 0.5.
    rankings = [rank(1, 3, 4, 2, 5), rank(3, 1, 2)]

    any_finding = evaluate_rule(collection, rankings, "any_finding", ks=(1, 3), bootstrap=0)
    single = evaluate_rule(collection, rankings, "single_label", ks=(1, 3), bootstrap=0)

    assert any_finding.micro is not None and single.micro is not None
    assert any_finding.micro.precision[1].value == pytest.approx(1.0)
    assert single.micro.precision[1].value == pytest.approx(0.0)
    assert single.micro.average_precision[3].value == pytest.approx(0.5)
    assert single.micro.precision[1].baseline == pytest.approx(1 / 3)  # min(1, 3) * 1/3 / 1
    assert single.images_taking_part == 4
    assert single.queries_not_taking_part == 1  # query 3 has two labels
    assert single.queries_scored == 1
    assert single.cleanup.multi_label == 1 and single.cleanup.dropped == 0


def test_same_patient_exclusion_changes_r_and_n() -> None:
    collection = [
        image(1, "A", patient="p1"),
        image(2, "A", patient="p1"),
        image(3, "A", patient="p2"),
        image(4, "B", patient="p3"),
        image(5, "B", patient="p4"),
    ]
    rankings = [rank(1, 3, 4, 5)]
    # Excluded: pool {3, 4, 5}, N = 3, R = 1; [yes, no, no]: AP@3 = 1; random P@1 = 1/3.
    # Kept: pool {2, 3, 4, 5}, N = 4, R = 2; AP@3 = (1/2) * 1 = 0.5; random P@1 = 2/4.
    excluded = evaluate_rule(collection, rankings, "any_finding", ks=(1, 3), bootstrap=0)
    kept = evaluate_rule(
        collection, rankings, "any_finding", ks=(1, 3), bootstrap=0, exclude_same_patient=False
    )

    assert excluded.micro is not None and kept.micro is not None
    assert excluded.micro.average_precision[3].value == pytest.approx(1.0)
    assert kept.micro.average_precision[3].value == pytest.approx(0.5)
    assert excluded.micro.precision[1].baseline == pytest.approx(1 / 3)
    assert kept.micro.precision[1].baseline == pytest.approx(0.5)


def test_images_without_patient_count_as_their_own_patient() -> None:
    collection = [image(1, "A", patient=None), image(2, "A", patient=None), image(3, "B", patient=None)]
    # Nobody is excluded besides the query: pool {2, 3}, R = 1, and image 2 comes first.
    report = evaluate_rule(collection, [rank(1, 2, 3)], "any_finding", ks=(1,), bootstrap=0)

    assert report.micro is not None and report.micro.precision[1].value == pytest.approx(1.0)
    assert report.cleanup.excluded == 0


def test_ids_outside_the_pool_are_dropped_and_counted() -> None:
    collection = [
        image(1, "A", patient="p1"),
        image(2, "A", patient="p1"),
        image(3, "A", patient="p2"),
        image(4, "B", patient="p3"),
    ]
    # 2: same patient, 1: the query itself, 99: unknown, then 3, 3 again, 4.
    # Cleaned ranking: 3, 4, so P@1 = 1.
    report = evaluate_rule(collection, [rank(1, 2, 1, 99, 3, 3, 4)], "any_finding", ks=(1,), bootstrap=0)

    assert report.micro is not None and report.micro.precision[1].value == pytest.approx(1.0)
    assert (report.cleanup.unknown, report.cleanup.excluded, report.cleanup.repeated) == (1, 2, 1)
    assert report.cleanup.dropped == 4


def test_macro_differs_from_micro_on_an_imbalanced_set() -> None:
    # P@1: A's four queries hit (1 each), B's two miss (0 each).
    # micro = 4/6; macro = (mean A 1 + mean B 0) / 2 = 0.5.
    # Random P@1: A has R = 3 of N = 5 (0.6), B has R = 1 of 5 (0.2);
    # micro = (4 * 0.6 + 2 * 0.2) / 6 = 2.8/6; macro = (0.6 + 0.2) / 2 = 0.4.
    report = evaluate_rule(IMBALANCED_SET, IMBALANCED_RANKINGS, "any_finding", ks=(1,), bootstrap=0)

    assert report.micro is not None and report.macro is not None
    assert report.micro.precision[1].value == pytest.approx(4 / 6)
    assert report.macro.precision[1].value == pytest.approx(0.5)
    assert report.micro.precision[1].baseline == pytest.approx(2.8 / 6)
    assert report.macro.precision[1].baseline == pytest.approx(0.4)
    rows = {row.label: row for row in report.labels}
    assert [row.label for row in report.labels] == ["A", "B"]
    assert rows["A"].queries == 4 and rows["A"].prevalence == pytest.approx(4 / 6)
    assert rows["B"].scores.precision[1].value == pytest.approx(0.0)
    assert rows["B"].scores.precision[1].baseline == pytest.approx(0.2)


def test_multi_label_query_counts_toward_each_of_its_labels() -> None:
    collection = [image(1, "A", "B"), image(2, "A"), image(3, "B"), image(4, "C"), image(5, "C")]
    # P@1: query 1 -> 2 hit (1), query 2 -> 4 miss (0), query 3 -> 1 hit, 4 -> 5 hit, 5 -> 4 hit.
    # Per label: A = mean(q1, q2) = 0.5, B = mean(q1, q3) = 1, C = 1.
    # micro = 4/5 = 0.8; macro = (0.5 + 1 + 1) / 3.
    rankings = [rank(1, 2), rank(2, 4, 1), rank(3, 1), rank(4, 5), rank(5, 4)]

    report = evaluate_rule(collection, rankings, "any_finding", ks=(1,), bootstrap=0)

    assert report.micro is not None and report.macro is not None
    assert report.micro.precision[1].value == pytest.approx(0.8)
    assert report.macro.precision[1].value == pytest.approx(2.5 / 3)
    assert {row.label: row.queries for row in report.labels} == {"A": 2, "B": 2, "C": 2}


def all_rankings(pool_size: int, relevant: int) -> list[list[bool]]:
    """The relevance list of every permutation of a pool whose first R images are relevant."""
    return [[item < relevant for item in order] for order in permutations(range(pool_size))]


def exact_mean(values: list[float]) -> float:
    return float(sum((Fraction(value) for value in values), Fraction(0)) / len(values))


@pytest.mark.parametrize(
    ("pool_size", "relevant", "k"),
    [(6, 2, 3), (6, 2, 6), (6, 3, 1), (5, 1, 3), (4, 4, 2), (4, 3, 6), (1, 1, 3), (7, 5, 4)],
)
def test_random_baselines_equal_the_mean_over_every_permutation(
    pool_size: int, relevant: int, k: int
) -> None:
    rankings = all_rankings(pool_size, relevant)

    precision = exact_mean([precision_at_k(r, k) for r in rankings])
    modified = exact_mean([modified_precision_at_k(r, k, relevant) for r in rankings])
    average = exact_mean([average_precision_at_k(r, k, relevant) for r in rankings])

    assert abs(random_precision_at_k(k, relevant, pool_size) - precision) < 1e-12
    assert abs(random_modified_precision_at_k(k, relevant, pool_size) - modified) < 1e-12
    assert abs(random_average_precision_at_k(k, relevant, pool_size) - average) < 1e-12


def test_random_average_precision_matches_a_hand_computed_value() -> None:
    # N = 6, R = 2, k = 3, p = 1/3: (1/2) * sum_i (p/i) * (1 + (i-1)/5)
    # = (1/6) * (1 + 1.2/2 + 1.4/3) = (1/6) * (31/15) = 31/90.
    assert abs(random_average_precision_at_k(3, 2, 6) - 31 / 90) < 1e-12


def bootstrap_set() -> tuple[list[LabelledImage], list[Ranking]]:
    """20 images of A and 20 of B; query i's ranking puts i % 4 images of the other label first."""
    collection = [image(i, "A" if i < 20 else "B") for i in range(40)]
    rankings = []
    for query in collection:
        same = [other.image_id for other in collection if other.labels == query.labels and other != query]
        different = [other.image_id for other in collection if other.labels != query.labels]
        misses = query.image_id % 4
        ordered = different[:misses] + same + different[misses:]
        rankings.append(Ranking(query.image_id, tuple(ordered[:20])))
    return collection, rankings


def test_bootstrap_is_reproducible_with_a_seed() -> None:
    collection, rankings = bootstrap_set()

    first = evaluate_rule(collection, rankings, "any_finding", seed=7)
    again = evaluate_rule(collection, rankings, "any_finding", seed=7)
    other = evaluate_rule(collection, rankings, "any_finding", seed=8)

    assert first == again
    assert first.micro is not None and other.micro is not None
    assert first.micro.average_precision[5] != other.micro.average_precision[5]  # another interval
    assert first.micro.average_precision[5].value == other.micro.average_precision[5].value


def test_bootstrap_interval_contains_the_point_estimate() -> None:
    collection, rankings = bootstrap_set()

    report = evaluate_rule(collection, rankings, "any_finding", bootstrap=500)

    assert report.micro is not None and report.macro is not None
    figures = [
        *report.micro.precision.values(),
        *report.micro.average_precision.values(),
        *report.macro.precision.values(),
        *report.labels[0].scores.precision.values(),
    ]
    for figure in figures:
        assert figure.low is not None and figure.high is not None
        assert figure.low <= figure.value <= figure.high
    wide = report.micro.precision[1]
    assert wide.low is not None and wide.high is not None and wide.low < wide.high


def test_same_patient_recall_scores_only_patients_with_other_images() -> None:
    collection = [
        image(1, "A", patient="p1"),
        image(2, "A", patient="p1"),
        image(3, "B", patient="p1"),
        image(4, "B", patient="p2"),
        image(5, "A", patient="p2"),
        image(6, "A", patient="p3"),
        image(7, "B", patient=None),
    ]
    # Query 1, mates {2, 3}, ranking 4, 2, 5, 3: recall@1 = 0/1, recall@2 = 1/min(2, 2) = 0.5.
    # Query 4, mate {5}, ranking 5, 1: recall@1 = 1, recall@2 = 1/min(2, 1) = 1.
    # Queries 6 (single image) and 7 (no patient) are skipped.
    # Random, N = 6: query 1 (M = 2): @1 = 2/6, @2 = 2 * 2/6 / 2 = 1/3;
    # query 4 (M = 1): @1 = 1/6, @2 = 2 * 1/6 / 1 = 1/3.
    rankings = [rank(1, 4, 2, 5, 3), rank(4, 5, 1), rank(6, 1), rank(7, 1)]

    report = same_patient_recall(collection, rankings, ks=(1, 2), bootstrap=0)

    assert report.recall is not None
    assert report.recall[1].value == pytest.approx(0.5)
    assert report.recall[2].value == pytest.approx(0.75)
    assert report.recall[1].baseline == pytest.approx(0.25)
    assert report.recall[2].baseline == pytest.approx(1 / 3)
    assert (report.queries_scored, report.queries_without_other_images) == (2, 2)


def test_near_duplicate_recall_at_1_counts_copies_that_find_their_original() -> None:
    report = near_duplicate_recall_at_1([(1, 1), (2, 3), (4, None), (5, 5)])

    assert (report.hits, report.pairs, report.recall_at_1) == (2, 4, 0.5)


def test_labels_of_gives_no_finding_only_to_images_without_findings() -> None:
    assert labels_of([]) == {"No Finding"}
    assert labels_of(["No Finding"]) == {"No Finding"}
    assert labels_of(["no finding", "Mass"]) == {"Mass"}
    assert labels_of(["Effusion", "Mass", ""]) == {"Effusion", "Mass"}


def full_report() -> EvaluationReport:
    rules = tuple(
        evaluate_rule(IMBALANCED_SET, IMBALANCED_RANKINGS, rule, ks=(1, 2), bootstrap=50) for rule in RULES
    )
    return EvaluationReport(
        metadata={"model_id": "densenet121-test", "set": "tiny", "images": 6, "seed": 0},
        rules=rules,
        same_patient=same_patient_recall(IMBALANCED_SET, IMBALANCED_RANKINGS, bootstrap=0),
        near_duplicate=near_duplicate_recall_at_1([(1, 1), (2, 3)]),
    )


def test_markdown_report_shows_the_headline_numbers() -> None:
    report = full_report()
    micro = report.rules[0].micro
    assert micro is not None

    text = render_markdown(report)

    assert "densenet121-test" in text
    assert "| any_finding | 1 | 0.667 [" in text  # micro P@1 = 4/6
    assert "(random: 0.467)" in text  # its baseline, 2.8/6
    assert "(random: 0.400)" in text  # the macro baseline
    assert f"[{micro.precision[1].low:.3f}, {micro.precision[1].high:.3f}]" in text
    assert "## Rule single_label" in text and "### P@k by label (any_finding)" in text
    assert "| queries without any relevant image (not scored) | 0 |" in text
    assert "0.500: 1 of 2 re-encoded copies" in text


def test_report_is_plain_json() -> None:
    report = full_report()

    data = json.loads(json.dumps(report.to_json()))

    assert data["metadata"]["model_id"] == "densenet121-test"
    assert data["rules"][0]["micro"]["precision"]["1"]["value"] == pytest.approx(4 / 6)
    assert data["rules"][0]["labels"][0]["label"] == "A"
    assert data["near_duplicate"]["recall_at_1"] == 0.5


@pytest.mark.parametrize(
    ("collection", "rankings", "options", "message"),
    [
        ([], [], {}, "collection is empty"),
        (EFFUSION_SET, [rank(42, 1)], {}, "query 42, which is not in the collection"),
        (EFFUSION_SET, [rank(1, 2), rank(1, 3)], {}, "query 1 has two rankings"),
        (EFFUSION_SET, [], {"ks": (0, 5)}, r"k must be >= 1; got \[0\]"),
        (EFFUSION_SET, [], {"ks": (5, -1)}, r"k must be >= 1; got \[-1\]"),
        (EFFUSION_SET, [], {"ks": ()}, "ks is empty"),
        (EFFUSION_SET, [], {"bootstrap": -1}, "bootstrap is the number of resamples"),
        ([image(1, "A"), image(1, "B")], [], {}, "image 1 appears twice"),
        ([image(1)], [], {}, "image 1 has no label"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(
    collection: list[LabelledImage], rankings: list[Ranking], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_rule(collection, rankings, "any_finding", **options)
    with pytest.raises(ValueError, match=message):
        same_patient_recall(collection, rankings, **options)


def test_unknown_rule_and_empty_near_duplicate_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown rule 'exact'"):
        evaluate_rule(EFFUSION_SET, [], cast(Rule, "exact"))
    with pytest.raises(ValueError, match="no near-duplicate pairs"):
        near_duplicate_recall_at_1([])
