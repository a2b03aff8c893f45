"""Tests of bench/report.py (stdlib only): python3 -m unittest discover -s bench -p 'test_*.py'"""
import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402


def results(*sections):
    return {"machine": "2 CPUs", "date": "2026-12-07T03:00:00Z", "sections": list(sections)}


class TargetsTable(unittest.TestCase):
    def test_every_expected_target_has_a_row_and_missing_ones_are_marked(self):
        sec = {"id": "gc", "title": "IPAM GC", "seconds": 90.0, "rows": [{"a": 1}], "targets": [
            {"id": "gc-reclaim", "what": "reclaimed within grace + 15 s", "met": True,
             "value": "3.0 s after the grace period", "previous": "56.0 s after the grace period", "anchor": "-"}]}
        md = report.render(results(sec), {}, plots=None)
        table = md.split("## Targets")[1].split("## ")[0]
        for _, tid, what, previous, *_ in report.EXPECTED:
            if tid != "gc-reclaim":
                self.assertIn(f"| {report.cell(what)} | {report.cell(previous)} | {report.NOT_MEASURED} | **no** |", table)
        self.assertIn("| IPAM GC | reclaimed within grace + 15 s | 56.0 s after the grace period | "
                      "3.0 s after the grace period | yes |", table)
        self.assertIn(f"1 of {len(report.EXPECTED)} met in this run ({len(report.EXPECTED) - 1} not measured)", table)
        self.assertEqual(len(report.missing_targets(results(sec))), len(report.EXPECTED) - 1)
        self.assertIn("_Section run time: 90 s._", md)

    def test_the_previous_figure_of_expected_fills_a_result_without_one_and_extras_are_kept(self):
        secs = results({"id": "footprint", "title": "Footprint", "targets": [
            {"id": "footprint-10", "what": "RSS ≤ 32 MiB at 10 nodes", "met": False, "value": "40 MiB", "anchor": "-"},
            {"what": "a target without an id", "met": True, "value": "1"}]})
        rows = report.target_rows(secs)
        fp = next(t for _, t in rows if t.get("id") == "footprint-10")
        self.assertEqual(fp["previous"], "20.2 MiB")
        self.assertTrue(any(t["what"] == "a target without an id" for _, t in rows))
        self.assertEqual(len(rows), len(report.EXPECTED) + 1)

    def test_an_entry_without_an_id_is_found_by_its_section_and_words(self):
        secs = results({"id": "node-events", "title": "Node events", "targets": [
            {"what": "operator CPU per Node event at 500 nodes < 20 ms", "met": True, "value": "3.1 ms", "anchor": "-"},
            {"what": "a label no selector reads costs 0 writes", "met": True, "value": "0"}]})
        rows = report.target_rows(secs)
        cpu = next(t for _, t in rows if t.get("value") == "3.1 ms")
        self.assertEqual(cpu["previous"], "99 ms per pass")
        self.assertNotIn("node-event-cpu", report.missing_targets(secs))
        self.assertEqual(rows[-1][1]["what"], "a label no selector reads costs 0 writes")

    def test_one_node_rounds_are_shown_as_a_span_beside_calico(self):
        r = [{"path": "agent", "seconds": s, "p99 ms": p} for s, p in (("0.71", "60"), ("0.65", "88"), ("0.90", "59"))]
        r.append({"path": "in-process", "seconds": "9.00", "p99 ms": "900"})
        md = report.render(results({"id": "one-node", "title": "one node", "rows": r}), {}, plots=None)
        self.assertIn("| 100 pods on one node | 2–3 min (calico#5612, 100 vCPU bare metal) | "
                      "0.65-0.90 s per round (3 rounds), p99 59-88 ms |", md)
        # Rows with different columns keep every column.
        self.assertIn("| path | seconds | p99 ms |", md)

    def test_main_writes_the_file_without_plots(self):
        with tempfile.TemporaryDirectory() as d:
            res, out = Path(d) / "results.json", Path(d) / "BENCHMARKS.md"
            res.write_text(json.dumps(results()))
            self.assertEqual(report.main(["--results", str(res), "--out", str(out), "--no-plots"]), 0)
            self.assertIn("## Targets", out.read_text())


if __name__ == "__main__":
    unittest.main()
