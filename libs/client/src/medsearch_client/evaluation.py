"""Retrieval quality of a labelled indexed set: every figure of `medsearch eval`, in pure Python.

The caller asks the server, for each query image, for its most similar images and hands the
rankings here with the images' labels. This module scores them under two relevance rules,
and puts a bootstrap interval and the exact expectation of a random ranking beside each
figure (`report` renders it). It knows no HTTP and needs nothing beyond the standard library.

Definitions. A query's pool is every image of the collection except the query, except (by
default) its patient's other images, except (single-label rule) images with several labels.
R is the number of relevant images in the pool, N its size. A ranking is cleaned before it is
scored: IDs outside the pool and repeated IDs are dropped (and counted), so the ranking may
end up shorter than k; a missing rank is a miss.

- hits@k: relevant images within the first k of the cleaned ranking.
- P@k = hits@k / k; under the single-label rule, the modified P@k = hits@k / min(k, R)
  (Denner et al. 2024), which reaches 1 even when a label has fewer than k other images.
- AP@k = (1 / min(k, R)) * sum, over ranks i <= k that hold a relevant image, of hits@i / i.
- micro = mean over scored queries; macro = mean over labels of the mean over the queries
  that carry the label. A query with R = 0 cannot be scored: it is left out and counted.
"""

from __future__ import annotations

import math
import operator
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Rule = Literal["any_finding", "single_label"]
RULES: tuple[Rule, ...] = ("any_finding", "single_label")
RULE_DESCRIPTIONS: dict[Rule, str] = {
    "any_finding": "relevant = shares at least one label with the query; every query takes part",
    "single_label": (
        "only images with exactly one label take part, as queries and as candidates; "
        "relevant = same label; P@k is the modified P@k = hits / min(k, R)"
    ),
}
KS: tuple[int, ...] = (1, 5, 10, 20)
NO_FINDING = "No Finding"
INTERVAL = (0.025, 0.975)  # the 95% bootstrap interval's percentiles

# Why a ranked ID was left out before scoring. The first three are data-quality problems;
# multi-label candidates are removed by design under the single-label rule.
UNKNOWN = "unknown"
EXCLUDED = "excluded"
REPEATED = "repeated"
MULTI_LABEL = "multi_label"


# --- Input ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledImage:
    """One indexed image and its labels; an image without findings carries "No Finding"."""

    image_id: int
    patient: str | None  # None: the image is its own patient
    labels: frozenset[str]


@dataclass(frozen=True)
class Ranking:
    """The server's answer for one query image: the most similar images, best first."""

    query_id: int
    ranked_ids: tuple[int, ...]


def labels_of(findings: Iterable[str]) -> frozenset[str]:
    """An image's labels from its findings: {"No Finding"} when it has none, else its findings.

    "No Finding" is matched without case (the catalog stores it lower-case) and dropped when
    real findings come with it; blank names are ignored.
    """
    names = {finding.strip() for finding in findings} - {""}
    real = frozenset(name for name in names if name.casefold() != NO_FINDING.casefold())
    return real or frozenset({NO_FINDING})


# --- Results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A mean, its 95% bootstrap interval (None without bootstrap) and a random ranking's mean."""

    value: float
    low: float | None
    high: float | None
    baseline: float

    def to_json(self) -> dict[str, float | None]:
        return {"value": self.value, "low": self.low, "high": self.high, "baseline": self.baseline}


@dataclass(frozen=True)
class Scores:
    """P@k and mAP@k at each cutoff k."""

    precision: Mapping[int, Figure]
    average_precision: Mapping[int, Figure]

    def to_json(self) -> dict[str, object]:
        return {
            "precision": _by_k_json(self.precision),
            "average_precision": _by_k_json(self.average_precision),
        }


@dataclass(frozen=True)
class LabelRow:
    """One label's line of the per-label table."""

    label: str
    queries: int  # scored queries that carry the label
    prevalence: float  # share of the rule's images that carry the label
    scores: Scores

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "queries": self.queries,
            "prevalence": self.prevalence,
            **self.scores.to_json(),
        }


@dataclass(frozen=True)
class RankingCleanup:
    """How many ranked IDs were left out before scoring, and why."""

    unknown: int = 0  # not an image of the collection
    excluded: int = 0  # the query itself, or (with patient exclusion) an image of its patient
    repeated: int = 0  # already higher in the same ranking
    multi_label: int = 0  # single-label rule: a candidate with several labels, removed by design

    @property
    def dropped(self) -> int:
        """The IDs that should not have been there: a data-quality figure."""
        return self.unknown + self.excluded + self.repeated

    def to_json(self) -> dict[str, int]:
        return {
            "unknown": self.unknown,
            "excluded": self.excluded,
            "repeated": self.repeated,
            "dropped": self.dropped,
            "multi_label": self.multi_label,
        }


@dataclass(frozen=True)
class RuleReport:
    """Every figure of one relevance rule; micro and macro are None when no query was scored."""

    rule: Rule
    ks: tuple[int, ...]
    exclude_same_patient: bool
    bootstrap: int
    seed: int
    images_taking_part: int
    queries_ranked: int
    queries_not_taking_part: int  # single-label rule: query images with several labels
    queries_without_relevant: int  # R = 0: not scored
    queries_scored: int
    cleanup: RankingCleanup
    micro: Scores | None
    macro: Scores | None
    labels: tuple[LabelRow, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "ks": list(self.ks),
            "exclude_same_patient": self.exclude_same_patient,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "images_taking_part": self.images_taking_part,
            "queries_ranked": self.queries_ranked,
            "queries_not_taking_part": self.queries_not_taking_part,
            "queries_without_relevant": self.queries_without_relevant,
            "queries_scored": self.queries_scored,
            "cleanup": self.cleanup.to_json(),
            "micro": None if self.micro is None else self.micro.to_json(),
            "macro": None if self.macro is None else self.macro.to_json(),
            "labels": [row.to_json() for row in self.labels],
        }


@dataclass(frozen=True)
class SamePatientReport:
    """How readily a patient's other images come first; recall is None when no query was scored."""

    ks: tuple[int, ...]
    bootstrap: int
    seed: int
    queries_ranked: int
    queries_without_other_images: int  # the patient has no other image (or is unknown)
    queries_scored: int
    cleanup: RankingCleanup
    recall: Mapping[int, Figure] | None

    def to_json(self) -> dict[str, object]:
        return {
            "ks": list(self.ks),
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "queries_ranked": self.queries_ranked,
            "queries_without_other_images": self.queries_without_other_images,
            "queries_scored": self.queries_scored,
            "cleanup": self.cleanup.to_json(),
            "recall": None if self.recall is None else _by_k_json(self.recall),
        }


@dataclass(frozen=True)
class NearDuplicateReport:
    """How often a re-encoded copy of an image finds the original first."""

    pairs: int
    hits: int

    @property
    def recall_at_1(self) -> float:
        return self.hits / self.pairs

    def to_json(self) -> dict[str, float | int]:
        return {"pairs": self.pairs, "hits": self.hits, "recall_at_1": self.recall_at_1}


MetadataValue = str | int | float | bool | None


@dataclass(frozen=True)
class EvaluationReport:
    """A whole evaluation: what was evaluated (model, set, seed...) and its figures."""

    metadata: Mapping[str, MetadataValue]
    rules: tuple[RuleReport, ...]
    same_patient: SamePatientReport | None = None
    near_duplicate: NearDuplicateReport | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "metadata": dict(self.metadata),
            "rules": [rule.to_json() for rule in self.rules],
            "same_patient": None if self.same_patient is None else self.same_patient.to_json(),
            "near_duplicate": None if self.near_duplicate is None else self.near_duplicate.to_json(),
        }


# --- Evaluation ----------------------------------------------------------------------------


def evaluate_rule(
    collection: Sequence[LabelledImage],
    rankings: Sequence[Ranking],
    rule: Rule,
    *,
    ks: Sequence[int] = KS,
    exclude_same_patient: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
) -> RuleReport:
    """Score every ranking under one relevance rule (see RULE_DESCRIPTIONS).

    Raises ValueError for an empty collection, a ranking of an unknown query, a cutoff below 1,
    a negative number of bootstrap resamples or an unknown rule.
    """
    cutoffs = _checked_cutoffs(ks)
    _check_bootstrap(bootstrap)
    _check_rule(rule)
    images = _indexed(collection)
    _check_rankings(rankings, images)
    pool = _Pool(images, rule, exclude_same_patient)
    cleanup: Counter[str] = Counter()
    not_taking_part = without_relevant = 0
    scored: list[_QueryScore] = []
    for ranking in rankings:
        query = images[ranking.query_id]
        if not pool.takes_part(query):
            not_taking_part += 1
            continue
        candidates = pool.candidates(query)
        ranked, left_out = _cleaned(ranking.ranked_ids, candidates)
        cleanup.update(left_out)
        if candidates.relevant == 0:
            without_relevant += 1
            continue
        scored.append(_score_query(ranked, candidates, cutoffs))
    micro, macro, label_rows = _summary(scored, pool, cutoffs, bootstrap, seed)
    return RuleReport(
        rule=rule,
        ks=cutoffs,
        exclude_same_patient=exclude_same_patient,
        bootstrap=bootstrap,
        seed=seed,
        images_taking_part=len(pool.members),
        queries_ranked=len(rankings),
        queries_not_taking_part=not_taking_part,
        queries_without_relevant=without_relevant,
        queries_scored=len(scored),
        cleanup=_cleanup(cleanup),
        micro=micro,
        macro=macro,
        labels=label_rows,
    )


def same_patient_recall(
    collection: Sequence[LabelledImage],
    rankings: Sequence[Ranking],
    *,
    ks: Sequence[int] = KS,
    bootstrap: int = 1000,
    seed: int = 0,
) -> SamePatientReport:
    """recall@k of the query's patient's other images, in rankings made WITHOUT patient exclusion.

    recall@k = (other images of the patient within the top k) / min(k, M), M = the patient's
    other images in the collection. It shows how much of the similarity is "same person"
    rather than "same finding". Queries of a patient with a single image (or None) are
    skipped and counted. The baseline is a random ranking of the N = collection - 1 others.
    """
    cutoffs = _checked_cutoffs(ks)
    _check_bootstrap(bootstrap)
    images = _indexed(collection)
    _check_rankings(rankings, images)
    pool = _Pool(images, "any_finding", exclude_same_patient=False)
    cleanup: Counter[str] = Counter()
    scored: list[_QueryScore] = []
    for ranking in rankings:
        candidates = pool.candidates(images[ranking.query_id])
        ranked, left_out = _cleaned(ranking.ranked_ids, candidates)
        cleanup.update(left_out)
        mates = pool.patient_mates(candidates.query)
        if mates:
            scored.append(_score_patient_recall(ranked, mates, candidates.size, cutoffs))
    recall = None
    if scored:
        recall = dict(zip(cutoffs, _Estimate.of(scored, bootstrap, seed).figures(_micro), strict=True))
    return SamePatientReport(
        ks=cutoffs,
        bootstrap=bootstrap,
        seed=seed,
        queries_ranked=len(rankings),
        queries_without_other_images=len(rankings) - len(scored),
        queries_scored=len(scored),
        cleanup=_cleanup(cleanup),
        recall=recall,
    )


def near_duplicate_recall_at_1(pairs: Sequence[tuple[int, int | None]]) -> NearDuplicateReport:
    """Share of re-encoded copies whose most similar image is their original.

    Each pair is (original_id, top-1 ID of the copy's search), None when the search found
    nothing (a miss).
    """
    if not pairs:
        raise ValueError("no near-duplicate pairs: give at least one (original_id, top1_id)")
    hits = sum(1 for original, top1 in pairs if top1 == original)
    return NearDuplicateReport(pairs=len(pairs), hits=hits)


# --- Per-query metrics and their random-ranking expectations --------------------------------


def hits_at_k(relevance: Sequence[bool], k: int) -> int:
    """Relevant images within the first k ranks (a ranking shorter than k just has fewer)."""
    return sum(relevance[:k])


def precision_at_k(relevance: Sequence[bool], k: int) -> float:
    """P@k = hits@k / k."""
    return hits_at_k(relevance, k) / k


def modified_precision_at_k(relevance: Sequence[bool], k: int, relevant: int) -> float:
    """hits@k / min(k, R): 1 when every reachable relevant image is found (Denner et al. 2024)."""
    return hits_at_k(relevance, k) / min(k, relevant)


def average_precision_at_k(relevance: Sequence[bool], k: int, relevant: int) -> float:
    """AP@k = (1 / min(k, R)) * sum over relevant ranks i <= k of hits@i / i."""
    hits = 0
    total = 0.0
    for rank, is_relevant in enumerate(relevance[:k], start=1):
        if is_relevant:
            hits += 1
            total += hits / rank
    return total / min(k, relevant)


def random_hits_at_k(k: int, relevant: int, pool_size: int) -> float:
    """E[hits@k] under a uniformly random ranking of the whole pool.

    Each rank holds a relevant image with probability p = R/N, and a random ranking has only
    m = min(k, N) ranks within the first k, so by linearity E[hits@k] = m * R / N.
    """
    return min(k, pool_size) * relevant / pool_size


def random_precision_at_k(k: int, relevant: int, pool_size: int) -> float:
    """E[P@k] under a random ranking: min(k, N) * R / N / k (R / N when k <= N)."""
    return random_hits_at_k(k, relevant, pool_size) / k


def random_modified_precision_at_k(k: int, relevant: int, pool_size: int) -> float:
    """E[hits@k / min(k, R)] under a random ranking: min(k, N) * R / N / min(k, R)."""
    return random_hits_at_k(k, relevant, pool_size) / min(k, relevant)


def random_average_precision_at_k(k: int, relevant: int, pool_size: int) -> float:
    """E[AP@k] under a uniformly random ranking of the pool, exactly.

    AP@k = (1 / min(k, R)) * sum_{i <= min(k, N)} rel_i * hits@i / i, so by linearity we need
    E[rel_i * hits@i] = P(rel_i) * E[hits@i | rel_i]. P(rel_i) = p = R/N. Given that rank i
    holds a relevant image, each of the i - 1 ranks above it holds one of the other N - 1
    images, R - 1 of them relevant, so E[hits@i | rel_i] = 1 + (i - 1)(R - 1)/(N - 1). Hence

        E[AP@k] = (1 / min(k, R)) * sum_{i=1..min(k, N)} (p / i) * (1 + (i - 1)(R - 1)/(N - 1)).

    When N = 1 only i = 1 occurs and the term is p / i. Checks: R = N gives p = 1 and terms
    (1/i) * i = 1, so E = min(k, N) / min(k, N) = 1; R = 1 gives (1/N) * H(min(k, N)), the mean
    reciprocal rank of the single relevant image cut at k. The tests compare it with the mean
    over every permutation of small pools.
    """
    share = relevant / pool_size
    total = 0.0
    for rank in range(1, min(k, pool_size) + 1):
        above = (rank - 1) * (relevant - 1) / (pool_size - 1) if rank > 1 else 0.0
        total += share / rank * (1 + above)
    return total / min(k, relevant)


@dataclass(frozen=True)
class _QueryScore:
    """One scored query's figures and a random ranking's expectations, in the same column order."""

    labels: frozenset[str]
    values: tuple[float, ...]
    baselines: tuple[float, ...]


def _score_query(ranked: Sequence[LabelledImage], candidates: _Candidates, ks: Sequence[int]) -> _QueryScore:
    """Columns: P@k (modified under the single-label rule) at each k, then AP@k at each k."""
    relevance = [candidates.is_relevant(image) for image in ranked]
    r, n = candidates.relevant, candidates.size
    if candidates.pool.rule == "single_label":
        precision = [modified_precision_at_k(relevance, k, r) for k in ks]
        random_precision = [random_modified_precision_at_k(k, r, n) for k in ks]
    else:
        precision = [precision_at_k(relevance, k) for k in ks]
        random_precision = [random_precision_at_k(k, r, n) for k in ks]
    average = [average_precision_at_k(relevance, k, r) for k in ks]
    random_average = [random_average_precision_at_k(k, r, n) for k in ks]
    return _QueryScore(
        labels=candidates.query.labels,
        values=(*precision, *average),
        baselines=(*random_precision, *random_average),
    )


def _score_patient_recall(
    ranked: Sequence[LabelledImage], mates: frozenset[int], pool_size: int, ks: Sequence[int]
) -> _QueryScore:
    """Columns: recall@k at each k; hits / min(k, M) is the modified P@k's ratio."""
    relevance = [image.image_id in mates for image in ranked]
    return _QueryScore(
        labels=frozenset(),
        values=tuple(modified_precision_at_k(relevance, k, len(mates)) for k in ks),
        baselines=tuple(random_modified_precision_at_k(k, len(mates), pool_size) for k in ks),
    )


# --- Candidate pools -------------------------------------------------------------------------


def _shares_a_label(query: frozenset[str], candidate: frozenset[str]) -> bool:
    return not query.isdisjoint(candidate)


def _same_single_label(query: frozenset[str], candidate: frozenset[str]) -> bool:
    return query == candidate  # both have exactly one label under this rule


_RELEVANT: dict[Rule, Callable[[frozenset[str], frozenset[str]], bool]] = {
    "any_finding": _shares_a_label,
    "single_label": _same_single_label,
}


class _Pool:
    """The images a rule lets take part, indexed so that each query's R and N come quickly."""

    def __init__(self, images: Mapping[int, LabelledImage], rule: Rule, exclude_same_patient: bool) -> None:
        self.images = images
        self.rule = rule
        self.exclude_same_patient = exclude_same_patient
        self.members = {
            image_id: image
            for image_id, image in images.items()
            if rule == "any_finding" or len(image.labels) == 1
        }
        self._label_sets = Counter(image.labels for image in self.members.values())
        self._patients: defaultdict[str, set[int]] = defaultdict(set)
        for image in images.values():
            if image.patient is not None:
                self._patients[image.patient].add(image.image_id)

    def takes_part(self, image: LabelledImage) -> bool:
        return image.image_id in self.members

    def is_relevant(self, query: LabelledImage, candidate: LabelledImage) -> bool:
        return _RELEVANT[self.rule](query.labels, candidate.labels)

    def patient_mates(self, query: LabelledImage) -> frozenset[int]:
        """The other images of the query's patient in the collection (none when it is None)."""
        if query.patient is None:
            return frozenset()
        return frozenset(self._patients[query.patient] - {query.image_id})

    def candidates(self, query: LabelledImage) -> _Candidates:
        """The query's pool: the members less the query and, when excluded, its patient's images."""
        excluded_ids = {query.image_id}
        if self.exclude_same_patient:
            excluded_ids |= self.patient_mates(query)
        excluded = [self.members[image_id] for image_id in excluded_ids if image_id in self.members]
        relevant_members = sum(
            count for labels, count in self._label_sets.items() if _RELEVANT[self.rule](query.labels, labels)
        )
        relevant_excluded = sum(1 for image in excluded if self.is_relevant(query, image))
        return _Candidates(
            pool=self,
            query=query,
            excluded_ids=frozenset(excluded_ids),
            relevant=relevant_members - relevant_excluded,
            size=len(self.members) - len(excluded),
        )


@dataclass(frozen=True)
class _Candidates:
    """One query's candidate pool: who may be ranked, R and N."""

    pool: _Pool
    query: LabelledImage
    excluded_ids: frozenset[int]
    relevant: int  # R
    size: int  # N

    def is_relevant(self, candidate: LabelledImage) -> bool:
        return self.pool.is_relevant(self.query, candidate)

    def reason_to_leave_out(self, candidate_id: int) -> str | None:
        if candidate_id not in self.pool.images:
            return UNKNOWN
        if candidate_id in self.excluded_ids:
            return EXCLUDED
        if candidate_id not in self.pool.members:
            return MULTI_LABEL
        return None


def _cleaned(ranked_ids: Iterable[int], candidates: _Candidates) -> tuple[list[LabelledImage], Counter[str]]:
    """The ranking restricted to the pool, in order, and why each left-out ID was left out."""
    kept: list[LabelledImage] = []
    left_out: Counter[str] = Counter()
    seen: set[int] = set()
    for candidate_id in ranked_ids:
        reason = REPEATED if candidate_id in seen else candidates.reason_to_leave_out(candidate_id)
        seen.add(candidate_id)
        if reason is None:
            kept.append(candidates.pool.images[candidate_id])
        else:
            left_out[reason] += 1
    return kept, left_out


def _cleanup(left_out: Counter[str]) -> RankingCleanup:
    return RankingCleanup(
        unknown=left_out[UNKNOWN],
        excluded=left_out[EXCLUDED],
        repeated=left_out[REPEATED],
        multi_label=left_out[MULTI_LABEL],
    )


# --- Averages and bootstrap intervals ------------------------------------------------------


@dataclass(frozen=True)
class _Averages:
    """Each column's mean under one weighting of the scored queries (all 1, or a resample)."""

    micro: tuple[float, ...]
    by_label: Mapping[str, tuple[float, ...]]  # only labels that have weight in this weighting

    @property
    def macro(self) -> tuple[float, ...]:
        label_means = list(self.by_label.values())
        return tuple(math.fsum(column) / len(label_means) for column in zip(*label_means, strict=True))


def _micro(averages: _Averages) -> tuple[float, ...]:
    return averages.micro


def _macro(averages: _Averages) -> tuple[float, ...]:
    return averages.macro


def _label_means(label: str) -> Callable[[_Averages], tuple[float, ...] | None]:
    return lambda averages: averages.by_label.get(label)


def _averages(
    columns: Sequence[Sequence[float]], weights: Sequence[int], groups: Mapping[str, Sequence[int]]
) -> _Averages:
    """Micro means over all queries; per-label means over each label's queries (a query that
    carries several labels counts once toward each)."""
    by_label: dict[str, tuple[float, ...]] = {}
    for label, members in groups.items():
        label_weights = [weights[index] for index in members]
        if sum(label_weights):
            by_label[label] = tuple(
                _weighted_mean(label_weights, [column[index] for index in members]) for column in columns
            )
    return _Averages(micro=tuple(_weighted_mean(weights, column) for column in columns), by_label=by_label)


def _weighted_mean(weights: Sequence[int], values: Sequence[float]) -> float:
    return math.fsum(map(operator.mul, weights, values)) / sum(weights)


def _resample_weights(size: int, times: int, seed: int) -> Iterator[list[int]]:
    """Bootstrap resamples of the scored queries (drawn with replacement, as many as there are),
    each given as how many times it drew each query."""
    rng = random.Random(seed)
    for _ in range(times):
        drawn = Counter(rng.choices(range(size), k=size))
        yield [drawn[index] for index in range(size)]


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default, Hyndman-Fan type 7):
    position fraction * (n - 1) in the sorted values."""
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def _interval(resampled: Sequence[float]) -> tuple[float | None, float | None]:
    if not resampled:
        return None, None
    ordered = sorted(resampled)
    return _percentile(ordered, INTERVAL[0]), _percentile(ordered, INTERVAL[1])


@dataclass(frozen=True)
class _Estimate:
    """The scored queries' means (values and baselines) and the bootstrap resamples' means."""

    points: _Averages
    baselines: _Averages
    resamples: tuple[_Averages, ...]

    @classmethod
    def of(cls, scored: Sequence[_QueryScore], bootstrap: int, seed: int) -> _Estimate:
        values = list(zip(*(score.values for score in scored), strict=True))
        baselines = list(zip(*(score.baselines for score in scored), strict=True))
        groups: defaultdict[str, list[int]] = defaultdict(list)
        for index, score in enumerate(scored):
            for label in score.labels:
                groups[label].append(index)
        ones = [1] * len(scored)
        return cls(
            points=_averages(values, ones, groups),
            baselines=_averages(baselines, ones, groups),
            resamples=tuple(
                _averages(values, weights, groups)
                for weights in _resample_weights(len(scored), bootstrap, seed)
            ),
        )

    def figures(self, pick: Callable[[_Averages], tuple[float, ...] | None]) -> tuple[Figure, ...]:
        """One Figure per column for one kind of mean: micro, macro or one label's.

        A label's interval uses only the resamples that drew at least one of its queries; the
        macro mean of a resample is over the labels it drew.
        """
        points, baselines = pick(self.points), pick(self.baselines)
        assert points is not None and baselines is not None
        resampled = [means for means in map(pick, self.resamples) if means is not None]
        return tuple(
            Figure(value, *_interval([means[column] for means in resampled]), baseline)
            for column, (value, baseline) in enumerate(zip(points, baselines, strict=True))
        )


def _summary(
    scored: Sequence[_QueryScore], pool: _Pool, ks: tuple[int, ...], bootstrap: int, seed: int
) -> tuple[Scores | None, Scores | None, tuple[LabelRow, ...]]:
    """Micro and macro scores and the per-label table, most frequent label first."""
    if not scored:
        return None, None, ()
    estimate = _Estimate.of(scored, bootstrap, seed)
    queries_per_label = Counter(label for score in scored for label in score.labels)
    images_per_label = Counter(label for image in pool.members.values() for label in image.labels)
    rows = tuple(
        LabelRow(
            label=label,
            queries=queries,
            prevalence=images_per_label[label] / len(pool.members),
            scores=_scores(estimate.figures(_label_means(label)), ks),
        )
        for label, queries in sorted(queries_per_label.items(), key=lambda item: (-item[1], item[0]))
    )
    return _scores(estimate.figures(_micro), ks), _scores(estimate.figures(_macro), ks), rows


def _scores(figures: Sequence[Figure], ks: Sequence[int]) -> Scores:
    """Split a row of figures, P@k at each k then AP@k at each k, into Scores."""
    return Scores(
        precision=dict(zip(ks, figures[: len(ks)], strict=True)),
        average_precision=dict(zip(ks, figures[len(ks) :], strict=True)),
    )


def _by_k_json(figures: Mapping[int, Figure]) -> dict[str, object]:
    return {str(k): figure.to_json() for k, figure in figures.items()}


# --- Input checks ------------------------------------------------------------------------------


def _checked_cutoffs(ks: Sequence[int]) -> tuple[int, ...]:
    if not ks:
        raise ValueError("ks is empty: give at least one cutoff k >= 1")
    wrong = [k for k in ks if k < 1]
    if wrong:
        raise ValueError(f"every cutoff k must be >= 1; got {wrong}")
    return tuple(sorted(set(ks)))


def _check_bootstrap(bootstrap: int) -> None:
    if bootstrap < 0:
        raise ValueError(f"bootstrap is the number of resamples: 0 or more, got {bootstrap}")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")


def _indexed(collection: Sequence[LabelledImage]) -> dict[int, LabelledImage]:
    if not collection:
        raise ValueError("the collection is empty: there is nothing to evaluate")
    images: dict[int, LabelledImage] = {}
    for image in collection:
        if image.image_id in images:
            raise ValueError(f"image {image.image_id} appears twice in the collection")
        if not image.labels:
            raise ValueError(
                f"image {image.image_id} has no label; an image without findings carries "
                f"{NO_FINDING!r} (see labels_of)"
            )
        images[image.image_id] = image
    return images


def _check_rankings(rankings: Sequence[Ranking], images: Mapping[int, LabelledImage]) -> None:
    seen: set[int] = set()
    for ranking in rankings:
        if ranking.query_id not in images:
            raise ValueError(f"a ranking is for query {ranking.query_id}, which is not in the collection")
        if ranking.query_id in seen:
            raise ValueError(f"query {ranking.query_id} has two rankings")
        seen.add(ranking.query_id)
