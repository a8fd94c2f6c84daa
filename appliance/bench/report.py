"""The benchmark's results as a JSON document and as a table: pure functions of the samples.

    doc = build_document(figures, samples, problems, meta)
    print(render_table(doc))

`samples[key][arm]` is the list of values, one per repetition, of one figure in
one arm. `problems[key]` is ("not available" | "failed", reason) for a figure
that has no usable samples. The document keeps every sample, so two runs can be
compared later figure by figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from appliance.bench.figures import Figure
from appliance.bench.stats import paired_ratios, ratio, round_sig, summarize

SCHEMA = "appliance-bench/1"


def figure_entry(figure: Figure, samples: Mapping[str, list[float]], problem: tuple[str, str] | None) -> dict:
    entry: dict = {
        "title": figure.title, "group": figure.group, "unit": figure.unit, "better": figure.better,
        "arms": list(figure.arms), "status": "ok", "reason": None,
    }
    for arm in ("direct", "proxied"):
        values = samples.get(arm) or []
        entry[arm] = {"samples": [round_sig(v) for v in values], "summary": summarize(values).to_json()} if values else None
    missing = [arm for arm in figure.arms if entry[arm] is None]
    if problem is not None or missing:
        status, reason = problem or ("failed", f"no samples for {', '.join(missing)}")
        entry.update(status=status, reason=reason)
    entry["ratio"] = entry["ratio_spread"] = entry["added"] = None
    if "direct" in figure.arms and entry["direct"] and entry["proxied"]:
        d, p = entry["direct"]["summary"]["median"], entry["proxied"]["summary"]["median"]
        entry["ratio"] = round_sig(ratio(p, d))
        pairs = paired_ratios(samples["direct"], samples["proxied"])
        if pairs:
            entry["ratio_spread"] = {"min": round_sig(min(pairs)), "max": round_sig(max(pairs))}
        if figure.better == "lower":
            entry["added"] = round_sig(p - d)
    if figure.target is not None:
        entry["target"] = {"text": figure.target.text, "kind": figure.target.kind,
                           "threshold": figure.target.threshold,
                           "met": figure.target.met(entry["ratio"], entry["added"]) if entry["status"] == "ok" else None}
    else:
        entry["target"] = None
    return entry


def build_document(figures: Iterable[Figure], samples: Mapping[str, Mapping[str, list[float]]],
                   problems: Mapping[str, tuple[str, str]], meta: Mapping) -> dict:
    doc = {"schema": SCHEMA, **meta, "figures": {}}
    for f in figures:
        doc["figures"][f.key] = figure_entry(f, samples.get(f.key, {}), problems.get(f.key))
    return doc


# --- the table ------------------------------------------------------------------------


def format_value(value: float, unit: str) -> str:
    if unit == "records/s":
        return f"{value:,.0f}"
    if unit == "CPU s/MB":
        return f"{value:.4f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _arm_cell(arm: dict | None, unit: str) -> str:
    if not arm:
        return "—"
    s = arm["summary"]
    text = format_value(s["median"], unit)
    if s["n"] > 1:
        text += f" ({format_value(s['min'], unit)}–{format_value(s['max'], unit)})"
    return text


def _ratio_cell(entry: dict) -> str:
    if entry["ratio"] is None:
        return "—"
    text = f"{entry['ratio']:.2f}"
    spread = entry["ratio_spread"]
    if spread and spread["min"] != spread["max"]:
        text += f" ({spread['min']:.2f}–{spread['max']:.2f})"
    if entry["added"] is not None:
        text += f", {entry['added']:+.3g} {entry['unit']}"
    return text


def _target_cell(entry: dict) -> str:
    target = entry["target"]
    if not target:
        return ""
    verdict = {True: "met", False: "MISSED", None: "n/a"}[target["met"]]
    return f"{target['text']}: {verdict}"


def render_table(doc: Mapping) -> str:
    """Every figure: median of each arm with min–max over repetitions, proxied/direct (min–max of the
    per-repetition ratios; added amount for lower-is-better figures) and the target."""
    header = ("figure", "unit", "direct", "proxied", "proxied/direct", "target")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for entry in doc["figures"].values():
        if entry["status"] != "ok":
            note = f"{entry['group']}: {entry['status']}: {entry['reason']}"
            if note not in notes:
                notes.append(note)
            if not (entry["direct"] or entry["proxied"]):
                rows.append((entry["title"], entry["unit"], f"({entry['status']})", "", "", ""))
                continue
        rows.append((entry["title"], entry["unit"], _arm_cell(entry["direct"], entry["unit"]),
                     _arm_cell(entry["proxied"], entry["unit"]), _ratio_cell(entry), _target_cell(entry)))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    reps = doc.get("options", {}).get("repeat")
    if reps:
        lines.append("")
        lines.append(f"median of {reps} repetition(s), (min–max); ratio: median proxied / median direct, "
                     "(min–max of the per-repetition ratios)")
    for note in notes:
        lines.append(f"! {note}")
    return "\n".join(lines)
