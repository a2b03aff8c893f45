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


def doc_inputs(bench_file):
    """The 'Inputs ...' paragraph of a criterion bench's `//!` header, so the report and the code
    state the inputs once."""
    path = ROOT / "benches" / bench_file
    if not path.exists():
        return ""
    para, keep = [], False
    for line in path.read_text().splitlines():
        if not line.startswith("//!"):
            break
        text = line[3:].strip()
        if text.startswith("Inputs"):
            keep = True
        elif keep and not text:
            break
        if keep:
            para.append(text)
    return " ".join(para)


def section(system, sid):
    return next((s for s in system.get("sections", []) if s.get("id") == sid), None)


def row(system, sid, path=None):
    s = section(system, sid)
    if not s:
        return None
    for r in s.get("rows", []):
        if path is None or r.get("path") == path:
            return r
    return None


# Calico's published figures, each with its public source.
# Each entry: what, Calico's figure, and how to read tortie's from the results.
CALICO = [
    ("API calls per pod address (steady state)",
     "about 10, 2 of them writes (counted from libcalico-go's IPAM code)",
     lambda s: (lambda r: r and f"{float(r['steady-state writes/alloc']) + float(r['steady-state reads/alloc']):.2f} "
                f"({r['steady-state writes/alloc']} writes, {r['steady-state reads/alloc']} reads; "
                f"{r['writes/alloc']} + {r['reads/alloc']} counting each node's block claim)")(row(s, "burst", "agent"))),
    ("100 pods on one node",
     "2–3 min (calico#5612, 100 vCPU bare metal)",
     lambda s: (lambda r: r and f"{r['seconds']} s, p99 {r['p99 ms']} ms")(row(s, "one-node", "agent"))),
    ("cluster-wide allocation rate",
     "1,000 pods on 10 nodes Running after 322 s ≈ 3.1 pods/s (spiderpool's IPAM benchmark, Calico 3.26)",
     lambda s: (lambda r: r and f"{r['allocations/s']} allocations/s ({r['pods']} pods, {r['nodes']} nodes)")(row(s, "burst", "agent"))),
    ("leaked address reclaimed",
     "15–22.5 min on a live node with default settings (leakGracePeriod 15 min, a sync every 7.5 min: kube-controllers' IPAM GC)",
     lambda s: (lambda r: r and f"{r['all reclaimed s']} s for {r['leaked addresses']} leaks "
                f"(grace {r['grace period s']} s)")(row(s, "gc"))),
    ("controller memory at ~10 nodes",
     "24 MiB (3.19) – 73 MiB (3.20) for kube-controllers (calico#5037)",
     lambda s: (lambda r: r and f"{r['RSS MiB']} MiB")(row(s, "footprint"))),
]


def main():
    results_path = ROOT / "bench" / "results.json"
    system = json.loads(results_path.read_text()) if results_path.exists() else {}
    micro = criterion_results()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# tortie benchmarks", "",
             "Made by `make bench` on this project's machine (2 cores, 24 GiB) from `bench/results.json`",
             "(system benchmarks against a real control plane: `benches/system.rs`, `benches/operator.rs`; a",
             "section re-run alone replaces only itself there) and criterion's estimates (micro benchmarks).",
             "Each section states its inputs so another implementation can be run on the same.", ""]
    if system.get("machine"):
        lines += [f"Machine: {system['machine']}", ""]

    # Every target in one place, then the sections with their inputs.
    targets = [(sec["title"], t) for sec in system.get("sections", []) for t in sec.get("targets", [])]
    if targets:
        met = sum(1 for _, t in targets if t.get("met"))
        lines += ["## Targets", "", f"{met} of {len(targets)} met in this run.", "",
                  "| benchmark | target | result | met |", "| --- | --- | --- | --- |"]
        for title, t in targets:
            lines.append(f"| {title} | {t['what']} | {t['value']} | {'yes' if t.get('met') else '**no**'} |")
        lines.append("")

    lines += ["## Compared with Calico", "",
              "Calico's `calico-ipam` could not be run on the same inputs: the Go module proxy this machine uses "
              "refuses `github.com/projectcalico/calico` (HTTP 403 for every version tried, e.g. "
              "`v3.31.2+incompatible` and `master`), and nothing of Calico's may be vendored here. So tortie's "
              "figures from this run stand beside Calico's published ones (the source of each is named with it; "
              "their hardware differs from this 2-core machine).", "",
              "| figure | Calico (published) | tortie (this run) |", "| --- | --- | --- |"]
    for what, calico, ours in CALICO:
        try:
            mine = ours(system) or "not measured in this run"
        except (KeyError, ValueError, TypeError):
            mine = "not measured in this run"
        lines.append(f"| {what} | {calico} | {mine} |")
    lines.append("")

    # Micro benchmarks
    if micro:
        lines += ["## Allocator core, selectors and BIRD rendering (criterion)", ""]
        for f in ("ipam_core.rs", "bgp_render.rs"):
            text = doc_inputs(f)
            if text:
                lines += [f"`benches/{f}`: {text}", ""]
        lines += ["| benchmark | mean | per second |", "| --- | --- | --- |"]
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
