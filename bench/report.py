#!/usr/bin/env python3
"""Turns tortie's benchmark figures into BENCHMARKS.md and PNG plots.

Inputs: bench/results.json (written by `tortie-bench`, the system benchmarks) and criterion's
estimates under target/criterion/**/new/estimates.json (the micro benchmarks). Output: bench/*.png
and BENCHMARKS.md. Run by `make bench`; needs matplotlib (installed by bench/run.sh).
"""
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def criterion_results():
    """{benchmark id: {mean_ns, throughput_per_s?}} from criterion's JSON."""
    out = {}
    base = TARGET / "criterion"
    for est in sorted(base.glob("**/new/estimates.json")):
        bench_dir = est.parent
        meta = bench_dir / "benchmark.json"
        if not meta.exists():
            continue
        m = json.loads(meta.read_text())
        e = json.loads(est.read_text())
        mean_ns = e["mean"]["point_estimate"]
        row = {"mean_ns": mean_ns, "ci_low_ns": e["mean"]["confidence_interval"]["lower_bound"],
               "ci_high_ns": e["mean"]["confidence_interval"]["upper_bound"]}
        tp = m.get("throughput") or {}
        if "Elements" in tp:
            row["per_second"] = tp["Elements"] / (mean_ns / 1e9)
        out[m["full_id"]] = row
    return out


def fmt_rate(x):
    return f"{x:,.0f}"


def main():
    results_path = ROOT / "bench" / "results.json"
    system = json.loads(results_path.read_text()) if results_path.exists() else {}
    micro = criterion_results()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# tortie benchmarks", "",
             "Made by `make bench` on this project's machine (2 cores, 24 GiB). Figures come from",
             "`bench/results.json` (system benchmarks: `tortie-bench`) and criterion (micro benchmarks).",
             "Each section states its inputs so another implementation can be run on the same.", ""]
    if system.get("machine"):
        lines += [f"Machine: {system['machine']}", ""]

    # Micro benchmarks
    if micro:
        lines += ["## Allocator core and selectors (criterion)", "", "| benchmark | mean | per second |", "| --- | --- | --- |"]
        for k, v in micro.items():
            mean = v["mean_ns"]
            unit = f"{mean/1e6:.3f} ms" if mean > 1e5 else f"{mean:.0f} ns"
            lines.append(f"| `{k}` | {unit} | {fmt_rate(v['per_second']) if 'per_second' in v else '–'} |")
        lines.append("")
        rates = {k: v["per_second"] for k, v in micro.items() if "per_second" in v}
        if rates:
            fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(rates)))
            ax.barh(list(rates.keys()), list(rates.values()), color="#c0392b")
            ax.set_xscale("log")
            ax.set_xlabel("operations per second (log)")
            ax.set_title("tortie allocator core")
            fig.tight_layout()
            fig.savefig(ROOT / "bench" / "micro.png", dpi=110)
            lines += ["![allocator core](bench/micro.png)", ""]

    for section in system.get("sections", []):
        lines += [f"## {section['title']}", "", section.get("inputs", ""), ""]
        rows = section.get("rows", [])
        if rows:
            cols = list(rows[0].keys())
            lines += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
            for r in rows:
                lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
            lines.append("")
        for t in section.get("targets", []):
            mark = "met" if t.get("met") else "NOT met"
            lines.append(f"- target: {t['what']}: **{mark}** ({t['value']}; anchor: {t.get('anchor', '')})")
        if section.get("targets"):
            lines.append("")
        plot = section.get("plot")
        if plot:
            fig, ax = plt.subplots(figsize=(7, 4))
            for series in plot["series"]:
                ax.plot(series["x"], series["y"], marker="o", label=series["label"])
            ax.set_xlabel(plot["x"])
            ax.set_ylabel(plot["y"])
            if plot.get("logx"):
                ax.set_xscale("log")
            if plot.get("logy"):
                ax.set_yscale("log")
            ax.set_title(section["title"])
            ax.grid(True, alpha=0.3)
            ax.legend()
            fig.tight_layout()
            name = plot["file"]
            fig.savefig(ROOT / "bench" / name, dpi=110)
            lines += [f"![{section['title']}](bench/{name})", ""]
        for note in section.get("notes", []):
            lines.append(f"> {note}")
        if section.get("notes"):
            lines.append("")

    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote BENCHMARKS.md ({len(micro)} micro benchmarks, {len(system.get('sections', []))} system sections)")


if __name__ == "__main__":
    sys.exit(main())
