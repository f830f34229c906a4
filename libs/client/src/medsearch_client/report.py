"""`medsearch eval`'s report files: JSON, Markdown, and a plot of precision against k per finding."""

from __future__ import annotations

import json
from pathlib import Path

from medsearch_client.evaluation import EvaluationReport, RuleReport, format_figure, render_markdown

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
