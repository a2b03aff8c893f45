#!/usr/bin/env python3
"""Turns tortie's benchmark figures into BENCHMARKS.md and PNG plots.

Inputs: bench/results.json (written by the system benchmarks, benches/system.rs and
benches/operator.rs) and criterion's estimates under target/criterion/**/new/estimates.json (the
micro benchmarks). Output: bench/*.png and BENCHMARKS.md. Run by `make bench`; needs matplotlib
(installed by bench/run.sh) for the plots (`--no-plots` skips them).

    python3 bench/report.py [--results bench/results.json] [--out BENCHMARKS.md] [--no-plots]

Every target of EXPECTED gets a row in the targets table, beside the previous run's figure; one
that the results do not hold is shown as not measured (and counted as not met), and listed on
stderr. Tests: `python3 -m unittest discover -s bench -p 'test_*.py'`.
"""
import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))

# Every target tortie holds itself to, in the order of the targets table: (section id, target id,
# the target in words, the previous run's figure[, the start of the words of an entry without an
# id]). A section's own entry in bench/results.json ({"id", "what", "value", "met", "anchor",
# "previous"}) takes precedence over the words and the previous figure here. An entry without an
# id matches by its section and its words (all of them, or the start given). A target no section
# reported still gets its row, marked not measured.
EXPECTED = [
    # BGP: published inputs, BIRD reloads, operator cost per event
    ("published-bytes", "published-mesh-1000", "published bytes for a 1,000-node full mesh ≤ 2 MB in total",
     "714 MB (every node's rendered files)"),
    ("published-bytes", "published-rr-5000", "published bytes for 5,000 nodes with route reflectors ≤ 10 MB in total",
     "57.3 MB (every node's rendered files)"),
    ("reflector", "reflector-5000", "a reflector with 5,000 clients gets its config, `bird -p` parses it and BIRD loads it",
     "config object over the 1 MiB limit from ~1,400 sessions"),
    ("bgp-reload", "reload-p50", "a BGP change reaches a reloaded BIRD in < 50 ms per node (p50 from the API call)",
     "170 ms (operator-rendered files)"),
    ("bgp-reload", "reload-unchanged", "unchanged output causes 0 reloads and 0 config file writes", "0 reloads"),
    ("publish-writes", "publish-unchanged", "0 API writes when an input change leaves every node's output alone", "not measured"),
    ("publish-writes", "publish-startup-once", "start-up publishes each object once", "not measured"),
    ("node-events", "node-event-cpu", "operator CPU per Node event at 5,000 nodes < 20 ms", "99 ms per pass",
     "operator CPU per Node event"),
    # IPAM: pod addresses
    ("one-node", "one-node-seconds", "100 pods on one node in under 1 s, every round", "1.10-1.37 s per round"),
    ("one-node", "one-node-p99", "p99 ADD under 100 ms, every round", "159-229 ms"),
    ("one-node", "one-node-reads", "no API reads per allocation in the steady state",
     "0.00 (0.04 counting the block claims)"),
    ("one-node", "one-node-writes", "at most 1.2 API writes per allocation in the steady state at 8 concurrent ADDs per node",
     "2.00 (2.06 counting the block claims)"),
    ("one-node", "one-node-blocks-in-process",
     "no more blocks claimed than the addresses need (in-process, no agent)",
     "15 block-claim writes (a claim takes 3)"),
    ("burst", "burst-rate", "at least 200 allocations/s cluster-wide (1000 pods on 20 nodes)", "70.8/s"),
    ("burst", "burst-p99", "p99 ADD under 500 ms", "1648 ms"),
    ("burst", "burst-writes", "at most 1.32 API writes per allocation in the steady state at 4 concurrent ADDs per node",
     "2.00 (2.06 counting the block claims)"),
    ("burst", "burst-reads", "no API reads per allocation in the steady state", "0.00 (0.04 counting the block claims)"),
    ("burst", "burst-blocks-in-process",
     "no more blocks claimed than the addresses need (in-process, no agent)",
     "180 block-claim writes on 20 nodes (a claim takes 3)"),
    # IPAM: garbage collection
    ("gc", "gc-block-writes", "≤ 2 IPAMBlock writes per block (the leak stamp, the release)",
     "101 (one write per released address)"),
    ("gc", "gc-reclaim", "10000 leaked addresses reclaimed within the grace period + 15 s", "56.0 s after the grace period"),
    ("gc-restart", "gc-restart", "the grace clock survives an operator restart (release at first sighting + grace, not restart + grace)",
     "not measured"),
    ("gc-node-deleted", "gc-node-deleted", "a deleted Node's blocks (empty or leaked) and affinities go within 10 s, without waiting for a GC tick",
     "not measured"),
    # Operator footprint
    ("footprint", "footprint-10", "RSS ≤ 32 MiB at 10 nodes", "20.2 MiB"),
    ("footprint", "footprint-1000", "RSS ≤ 64 MiB at 1,000 nodes with 50k pods", "105.8 MiB"),
    ("footprint", "footprint-5000", "RSS ≤ 128 MiB at 5,000 nodes with 100k handles", "236.3 MiB"),
]

NOT_MEASURED = "not measured in this run"


def criterion_results(target=TARGET):
    """{benchmark id: {mean_ns, throughput_per_s?}} from criterion's JSON."""
    out = {}
    base = Path(target) / "criterion"
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


def rows(system, sid, path=None):
    s = section(system, sid)
    if not s:
        return []
    return [r for r in s.get("rows", []) if path is None or r.get("path") == path]


def row(system, sid, path=None):
    r = rows(system, sid, path)
    return r[0] if r else None


def span(values, unit=""):
    """'a' or 'lo-hi' (as numbers sort) of a list of figures as the results print them."""
    vals = sorted({str(v) for v in values}, key=lambda v: float(v))
    if not vals:
        return None
    return (vals[0] if len(vals) == 1 else f"{vals[0]}-{vals[-1]}") + unit


def one_node_figure(system):
    agent = rows(system, "one-node", "agent")
    if not agent:
        return None
    n = len(agent)
    return (f"{span([r['seconds'] for r in agent], ' s')} per round ({n} round{'s' if n > 1 else ''}), "
            f"p99 {span([r['p99 ms'] for r in agent], ' ms')}")


# Calico's published figures, each with its public source, and how to read tortie's from the results.
CALICO = [
    ("API calls per pod address (steady state)",
     "about 10, 2 of them writes (counted from libcalico-go's IPAM code)",
     lambda s: (lambda r: r and f"{float(r['steady-state writes/alloc']) + float(r['steady-state reads/alloc']):.2f} "
                f"({r['steady-state writes/alloc']} writes, {r['steady-state reads/alloc']} reads; "
                f"{r['writes/alloc']} + {r['reads/alloc']} counting each node's block claim)")(row(s, "burst", "agent"))),
    ("100 pods on one node",
     "2–3 min (calico#5612, 100 vCPU bare metal)",
     one_node_figure),
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


def target_rows(system):
    """[(section title, target entry)] in EXPECTED's order, then any other target the results
    hold; an expected target without a result is an entry with value NOT_MEASURED."""
    found = [(sec.get("id", ""), sec.get("title", sec.get("id", "")), t)
             for sec in system.get("sections", []) for t in sec.get("targets", [])]
    used = set()

    def find(sec, tid, what, prefix):
        for test in (lambda sid, t: t.get("id") == tid,
                     lambda sid, t: not t.get("id") and sid == sec
                     and str(t.get("what", "")).startswith(prefix or what)
                     and (prefix or t.get("what") == what)):
            for i, (sid, title, t) in enumerate(found):
                if i not in used and test(sid, t):
                    used.add(i)
                    return title, t
        return None

    out = []
    for sec, tid, what, previous, *prefix in EXPECTED:
        hit = find(sec, tid, what, prefix[0] if prefix else None)
        if hit:
            title, t = hit
            out.append((title, {"previous": previous, **t}))
        else:
            out.append(("–", {"id": tid, "what": what, "value": NOT_MEASURED, "met": False,
                              "previous": previous, "missing": True}))
    out += [(title, t) for i, (_, title, t) in enumerate(found) if i not in used]
    return out


def missing_targets(system):
    return [t["id"] for _, t in target_rows(system) if t.get("missing")]


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(system, micro, plots=None, png_dir=ROOT / "bench"):
    """BENCHMARKS.md's text. `plots`: matplotlib.pyplot, or None for no plots."""
    lines = ["# tortie benchmarks", "",
             "Made by `make bench` on this project's machine from `bench/results.json` (system benchmarks against a",
             "real control plane: `benches/system.rs`, `benches/operator.rs`; a section re-run alone replaces only",
             "itself there) and criterion's estimates (micro benchmarks). Each section states its inputs so another",
             "implementation can be run on the same.", ""]
    if system.get("machine"):
        lines += [f"Machine: {system['machine']}" + (f"; run finished {system['date'][:16].replace('T', ' ')} UTC"
                                                      if system.get("date") else ""), ""]

    # Every target in one place, each beside the previous run's figure.
    targets = target_rows(system)
    if system.get("sections") or targets:
        met = sum(1 for _, t in targets if t.get("met"))
        missing = sum(1 for _, t in targets if t.get("missing"))
        summary = f"{met} of {len(targets)} met in this run"
        if missing:
            summary += f" ({missing} not measured)"
        lines += ["## Targets", "", summary + ". \"Previous run\": the figure before this round of work.", "",
                  "| benchmark | target | previous run | this run | met |", "| --- | --- | --- | --- | --- |"]
        for title, t in targets:
            lines.append(f"| {cell(title)} | {cell(t['what'])} | {cell(t.get('previous') or '–')} | "
                         f"{cell(t['value'])} | {'yes' if t.get('met') else '**no**'} |")
        lines.append("")

    lines += ["## Compared with Calico", "",
              "Calico's `calico-ipam` could not be run on the same inputs: the Go module proxy this machine uses "
              "refuses `github.com/projectcalico/calico` (HTTP 403 for every version tried, e.g. "
              "`v3.31.2+incompatible` and `master`), and nothing of Calico's may be vendored here. So tortie's "
              "figures from this run stand beside Calico's published ones (the source of each is named with it; "
              "their hardware differs from this machine).", "",
              "| figure | Calico (published) | tortie (this run) |", "| --- | --- | --- |"]
    for what, calico, ours in CALICO:
        try:
            mine = ours(system) or NOT_MEASURED
        except (KeyError, ValueError, TypeError):
            mine = NOT_MEASURED
        lines.append(f"| {what} | {calico} | {cell(mine)} |")
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
        if rates and plots:
            fig, ax = plots.subplots(figsize=(8, 0.5 + 0.45 * len(rates)))
            ax.barh(list(rates.keys()), list(rates.values()), color="#c0392b")
            ax.set_xscale("log")
            ax.set_xlabel("operations per second (log)")
            ax.set_title("tortie allocator core")
            fig.tight_layout()
            fig.savefig(png_dir / "micro.png", dpi=110)
            plots.close(fig)
            lines += ["![allocator core](bench/micro.png)", ""]

    for sec in system.get("sections", []):
        lines += [f"## {sec['title']}", "", sec.get("inputs", ""), ""]
        srows = sec.get("rows", [])
        if srows:
            cols = []
            for r in srows:
                cols += [c for c in r.keys() if c not in cols]
            lines += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
            for r in srows:
                lines.append("| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |")
            lines.append("")
        for t in sec.get("targets", []):
            mark = "met" if t.get("met") else "NOT met"
            extra = [f"previous run: {t['previous']}"] if t.get("previous") else []
            if t.get("anchor") and t["anchor"] != "-":
                extra.append(f"anchor: {t['anchor']}")
            lines.append(f"- target: {t['what']}: **{mark}** ({'; '.join([str(t['value'])] + extra)})")
        if sec.get("targets"):
            lines.append("")
        plot = sec.get("plot")
        if plot and plots:
            fig, ax = plots.subplots(figsize=(7, 4))
            for series in plot["series"]:
                ax.plot(series["x"], series["y"], marker="o", label=series["label"])
            ax.set_xlabel(plot["x"])
            ax.set_ylabel(plot["y"])
            if plot.get("logx"):
                ax.set_xscale("log")
            if plot.get("logy"):
                ax.set_yscale("log")
            ax.set_title(sec["title"])
            ax.grid(True, alpha=0.3)
            ax.legend()
            fig.tight_layout()
            name = plot["file"]
            fig.savefig(png_dir / name, dpi=110)
            plots.close(fig)
            lines += [f"![{sec['title']}](bench/{name})", ""]
        for note in sec.get("notes", []):
            lines.append(f"> {note}")
        if sec.get("notes"):
            lines.append("")
        if sec.get("seconds") is not None:
            lines += [f"_Section run time: {sec['seconds']:.0f} s._", ""]

    timed = [s["seconds"] for s in system.get("sections", []) if s.get("seconds") is not None]
    if timed:
        lines += ["## Run time", "",
                  f"The system sections above took {sum(timed) / 60:.1f} min together (cluster start-up, "
                  "criterion and the build not counted).", ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--no-plots", action="store_true", help="write no PNG (matplotlib not needed)")
    args = ap.parse_args(argv)
    system = json.loads(args.results.read_text()) if args.results.exists() else {}
    micro = criterion_results()
    plots = None
    if not args.no_plots:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plots
    args.out.write_text(render(system, micro, plots))
    missing = missing_targets(system)
    for tid in missing:
        print(f"report: target {tid} not measured in {args.results}", file=sys.stderr)
    print(f"wrote {args.out} ({len(micro)} micro benchmarks, {len(system.get('sections', []))} system sections, "
          f"{len(missing)} expected targets not measured)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
