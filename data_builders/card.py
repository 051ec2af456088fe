"""The dataset card (card.md): what is in a built MEU-Instruct dataset and how far the measured
motion agrees with the labels."""

from __future__ import annotations

from collections import Counter


def _table(title: str, counts: dict[str, Counter], keys: list[str]) -> list[str]:
    splits = list(counts)
    lines = [f"### {title}", "", "| | " + " | ".join(splits) + " | total |", "|---" * (len(splits) + 2) + "|"]
    for k in keys:
        row = [counts[s].get(k, 0) for s in splits]
        lines.append(f"| {k} | " + " | ".join(str(v) for v in row) + f" | {sum(row)} |")
    return lines + [""]


def agreement_summary(clips: list[dict]) -> dict:
    """AU precision/recall of the measured AUs against the labelled ones, over labelled clips."""
    labelled = [c for c in clips if c["labelled"]]
    tp = sum(len(c["confirmed"]) for c in labelled)
    fn = sum(len(c["not_observed"]) for c in labelled)
    fp = sum(len(c["unlabelled_motion"]) for c in labelled)
    return {
        "clips_with_au_labels": len(labelled),
        "clips_fully_confirmed": sum(c["agree"] for c in labelled),
        "au_recall": round(tp / (tp + fn), 3) if tp + fn else None,
        "au_precision": round(tp / (tp + fp), 3) if tp + fp else None,
    }


def write_card(path, name: str, rows_by_split: dict[str, list[dict]], clip_agreement: list[dict], build: dict) -> None:
    qtypes = sorted({r["qtype"] for rows in rows_by_split.values() for r in rows})
    by_type = {s: Counter(r["qtype"] for r in rows) for s, rows in rows_by_split.items()}
    clip_rows = {s: {r["clip_id"] + r["subject"]: r for r in rows} for s, rows in rows_by_split.items()}
    coarse = {s: Counter(r["coarse"] or "none" for r in clips.values()) for s, clips in clip_rows.items()}
    fine = {s: Counter(r["fine"] or "none" for r in clips.values()) for s, clips in clip_rows.items()}
    subjects = {s: len({r["subject"] for r in rows}) for s, rows in rows_by_split.items()}
    agree = agreement_summary(clip_agreement)
    lines = [
        f"# {name}: MEU-Instruct dataset card", "",
        f"Built by `mellm build-data` from {', '.join(build['datasets'])} on {build['finished']}.",
        f"Clips: {build['counts']['built']} built, {build['counts']['failed']} failed "
        f"(see failures.jsonl), {build['counts']['cached']} taken from the perception cache.",
        f"Perception: flow `{build['perception']['flow']}`, settings key `{build['perception']['key']}`. "
        f"Images per sample: {', '.join(build['prompt']['image_roles'])}; motion description in the prompt: "
        f"{build['prompt']['evidence_in_prompt']}.", "",
        "Splits hold subjects apart: " + ", ".join(f"{s} {n} subject{'s' if n != 1 else ''}" for s, n in subjects.items())
        + ". LOSO folds are in splits.json.", "",
        "## Counts", "",
        *_table("Samples per question type", by_type, qtypes),
        *_table("Clips per coarse class", coarse, sorted({k for c in coarse.values() for k in c})),
        *_table("Clips per fine class", fine, sorted({k for c in fine.values() for k in c})),
        "## Measured motion against the labels", "",
        "For clips with AU labels: how many labelled AUs the optical-flow evidence also finds (recall), "
        "and how many AUs it finds are labelled (precision). Disagreements are kept in each sample's "
        "`agreement` field and stated in its analysis answer.", "",
        "| clips with AU labels | fully confirmed | AU recall | AU precision |", "|---|---|---|---|",
        f"| {agree['clips_with_au_labels']} | {agree['clips_fully_confirmed']} | {agree['au_recall']} | {agree['au_precision']} |",
        "",
    ]
    path.write_text("\n".join(lines))
