"""`medsearch eval`'s report files: JSON, Markdown, and a plot of precision against k per finding;
the scoring itself is `evaluation`'s."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from medsearch_client.evaluation import (
    RULE_DESCRIPTIONS,
    EvaluationReport,
    Figure,
    MetadataValue,
    NearDuplicateReport,
    RankingCleanup,
    RuleReport,
    SamePatientReport,
    Scores,
)

# More lines than this would not be readable in one plot: the most frequent findings are drawn.
MAX_LINES = 8


def plot_precision_at_k(rule: RuleReport, title: str, path: Path) -> None:
    """One line per finding (its P@k), the micro average in bold, each random baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    ks = list(rule.ks)
    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=110)
    rows = sorted(rule.labels, key=lambda row: -row.queries)[:MAX_LINES]
    for row in rows:
        if not row.queries:
            continue
        values = [row.scores.precision[k].value for k in ks]
        (line,) = axes.plot(ks, values, marker="o", linewidth=1.2, label=f"{row.label} ({row.queries})")
        baselines = [row.scores.precision[k].baseline for k in ks]
        axes.plot(ks, baselines, linestyle=":", linewidth=1, color=line.get_color())
    if rule.micro is not None:
        micro = rule.micro.precision
        axes.plot(
            ks, [micro[k].value for k in ks], color="black", linewidth=2.5, marker="s", label="all queries"
        )
        low = [micro[k].low for k in ks]
        high = [micro[k].high for k in ks]
        if all(value is not None for value in low + high):
            axes.fill_between(ks, low, high, color="black", alpha=0.12, label="95 % interval")  # type: ignore[arg-type]
        axes.plot(ks, [micro[k].baseline for k in ks], color="black", linestyle="--", label="random ranking")
    axes.plot([], [], linestyle=":", color="gray", label="dotted: that finding's random ranking")
    axes.set_xticks(ks)
    axes.set_xlabel("k (results looked at)")
    axes.set_ylabel("precision at k" if rule.rule == "any_finding" else "modified precision at k")
    axes.set_ylim(0, 1)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper right", ncol=2)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def write_report(result: EvaluationReport, folder: Path) -> list[Path]:
    """eval.json, eval.md and precision_at_k.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "eval.json", folder / "eval.md", folder / "precision_at_k.png"]
    paths[0].write_text(json.dumps(result.to_json(), indent=2) + "\n")
    markdown = render_markdown(result) + f"\n![Precision at k per finding]({paths[2].name})\n"
    paths[1].write_text(markdown)
    any_finding = result.rules[0]
    title = f"{result.metadata['model_id']} on {result.metadata['datasets']}: shares a finding"
    plot_precision_at_k(any_finding, title, paths[2])
    return paths


def headline(result: EvaluationReport) -> list[str]:
    """One line per rule: P@10 and mAP@10 (micro) against a random ranking."""
    lines = []
    for rule in result.rules:
        if rule.micro is None:
            lines.append(f"{rule.rule}: no query scored")
            continue
        k = 10 if 10 in rule.ks else rule.ks[-1]
        p, ap = rule.micro.precision[k], rule.micro.average_precision[k]
        lines.append(
            f"{rule.rule}: P@{k} {format_figure(p)}, mAP@{k} {format_figure(ap)} "
            f"({rule.queries_scored} queries)"
        )
    if result.same_patient is not None and result.same_patient.recall is not None:
        lines.append(f"same patient: R@10 {format_figure(result.same_patient.recall[10])}")
    if result.near_duplicate is not None:
        lines.append(
            f"near duplicates: R@1 {result.near_duplicate.recall_at_1:.3f} of {result.near_duplicate.pairs}"
        )
    return lines


# --- Markdown ----------------------------------------------------------------------------------


def render_markdown(report: EvaluationReport) -> str:
    """The report as Markdown: what was evaluated, the headline table, then each rule's counts
    and per-label tables, the same-patient and near-duplicate figures when present."""
    sections = ["# Retrieval evaluation"]
    if report.metadata:
        sections.append(
            _table(["", "value"], [[key, _plain(value)] for key, value in report.metadata.items()])
        )
    sections += [_headline(report.rules), *(_rule_section(rule) for rule in report.rules)]
    if report.same_patient is not None:
        sections.append(_same_patient_section(report.same_patient))
    if report.near_duplicate is not None:
        sections.append(_near_duplicate_section(report.near_duplicate))
    return "\n\n".join(sections) + "\n"


def format_figure(figure: Figure) -> str:
    """A figure as `value [low, high] (random: baseline)`, three decimals; no interval without
    bootstrap."""
    interval = "" if figure.low is None or figure.high is None else f" [{figure.low:.3f}, {figure.high:.3f}]"
    return f"{figure.value:.3f}{interval} (random: {figure.baseline:.3f})"


def _headline(rules: Sequence[RuleReport]) -> str:
    rows: list[list[str]] = []
    for rule in rules:
        if rule.micro is None or rule.macro is None:
            rows.append([rule.rule, "-", *["no query scored"] * 4])
            continue
        for k in rule.ks:
            rows.append(
                [
                    rule.rule,
                    str(k),
                    format_figure(rule.micro.precision[k]),
                    format_figure(rule.macro.precision[k]),
                    format_figure(rule.micro.average_precision[k]),
                    format_figure(rule.macro.average_precision[k]),
                ]
            )
    header = ["rule", "k", "P@k micro", "P@k macro", "mAP@k micro", "mAP@k macro"]
    return "\n\n".join(
        [
            "## Headline",
            "Each cell: mean [95% bootstrap interval] (random: the mean a random ranking would get). "
            "Under single_label, P@k is the modified P@k = hits / min(k, R).",
            _table(header, rows),
        ]
    )


def _rule_section(rule: RuleReport) -> str:
    settings = (
        f"{RULE_DESCRIPTIONS[rule.rule]}. Cutoffs k: {', '.join(map(str, rule.ks))}; "
        f"the query's patient's other images {'excluded' if rule.exclude_same_patient else 'kept'}; "
        f"bootstrap: {rule.bootstrap} resamples, seed {rule.seed}."
    )
    counts = [
        ["images taking part", str(rule.images_taking_part)],
        ["queries ranked", str(rule.queries_ranked)],
        ["queries not taking part (several labels)", str(rule.queries_not_taking_part)],
        ["queries without any relevant image (not scored)", str(rule.queries_without_relevant)],
        ["queries scored", str(rule.queries_scored)],
        *_cleanup_rows(rule.cleanup),
        ["candidates with several labels removed", str(rule.cleanup.multi_label)],
    ]
    parts = [f"## Rule {rule.rule}", settings, _table(["", "count"], counts)]
    if rule.labels:
        parts += [
            f"### P@k by label ({rule.rule})",
            _label_table(rule, lambda scores: scores.precision, "P"),
            f"### mAP@k by label ({rule.rule})",
            _label_table(rule, lambda scores: scores.average_precision, "mAP"),
        ]
    return "\n\n".join(parts)


def _label_table(rule: RuleReport, metric: Callable[[Scores], Mapping[int, Figure]], name: str) -> str:
    header = ["label", "queries", "prevalence", *(f"{name}@{k}" for k in rule.ks)]
    rows = [
        [
            row.label,
            str(row.queries),
            f"{row.prevalence:.3f}",
            *map(format_figure, metric(row.scores).values()),
        ]
        for row in rule.labels
    ]
    return _table(header, rows)


def _same_patient_section(report: SamePatientReport) -> str:
    parts = [
        "## Same-patient recall",
        "Rankings made without patient exclusion; recall@k = the patient's other images in the "
        "top k / min(k, their number).",
    ]
    if report.recall is not None:
        parts.append(
            _table(["k", "recall@k"], [[str(k), format_figure(f)] for k, f in report.recall.items()])
        )
    counts = [
        ["queries ranked", str(report.queries_ranked)],
        ["queries whose patient has no other image (not scored)", str(report.queries_without_other_images)],
        ["queries scored", str(report.queries_scored)],
        *_cleanup_rows(report.cleanup),
    ]
    parts.append(_table(["", "count"], counts))
    return "\n\n".join(parts)


def _near_duplicate_section(report: NearDuplicateReport) -> str:
    return (
        "## Near-duplicate recall@1\n\n"
        f"{report.recall_at_1:.3f}: {report.hits} of {report.pairs} re-encoded copies found their "
        "original first."
    )


def _cleanup_rows(cleanup: RankingCleanup) -> list[list[str]]:
    return [
        ["ranked IDs dropped: not in the collection", str(cleanup.unknown)],
        ["ranked IDs dropped: the query or an excluded same-patient image", str(cleanup.excluded)],
        ["ranked IDs dropped: repeated", str(cleanup.repeated)],
    ]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [_table_row(header), _table_row(["---"] * len(header)), *map(_table_row, rows)]
    return "\n".join(lines)


def _table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _plain(value: MetadataValue) -> str:
    return "-" if value is None else str(value)
