"""Detection benchmark: how well detain tells malicious packages from popular honest ones.

The corpus (bench/corpus/) is the project's own: malicious-pattern sdists written here,
one behaviour family per category, and the sdists of popular PyPI projects at pinned
versions. A package counts as *flagged* when it has at least one high-severity finding.

  * static: `detain scan` of the unpacked sdist (Bandit + detain's checks). Recall per
    malicious category; per benign package, whether it is flagged and by which rules.
  * dynamic and verdict (--dynamic): `detain package SDIST --json -` per package, in its
    sandboxes. Its exit status is the dynamic column; its report's `verdict`, when
    detain package writes one, the verdict column (else n/a).

The issue's goal: static recall >= 85% with <= 5% of benign packages flagged high.

    python bench/detection.py [--offline] [--dynamic] [--json FILE] [--cache DIR]
                              [--benign-limit N] [--only NAME ...] [--jobs N]

`--dynamic` takes about 45 s a package (70 in all): `--benign-limit 10` keeps the first ten
benign projects (every malicious sample still runs), `--only` names the packages to run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from corpus import CACHE, build_malicious, fetch_benign

from detain.package.unpack import unpack
from detain.scan import scan

RECALL_GOAL, BENIGN_GOAL = 0.85, 0.05


def static(sdist: Path) -> list[dict[str, Any]]:
    """The high findings of `detain scan` over the unpacked sdist."""
    with tempfile.TemporaryDirectory(prefix="detain-bench-") as tmp:
        root = unpack(sdist, Path(tmp) / "unpacked")
        return [f for f in scan(root)["findings"] if f["severity"] == "high"]


def dynamic(sdist: Path, seconds: float) -> dict[str, Any]:
    """`detain package` of the sdist: its exit status and its verdict, if it gives one."""
    command = [sys.executable, "-m", "detain", "package", str(sdist), "--json", "-"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=seconds, check=False)
    except subprocess.TimeoutExpired:
        return {"exit": None, "verdict": None, "note": f"timed out after {seconds:.0f} s"}
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {}
    if not isinstance(report, dict):
        report = {}
    verdict = report.get("verdict") if isinstance(report.get("verdict"), dict) else {}
    level = verdict.get("level")
    notable = [e for p in report.get("phases") or [] if isinstance(p, dict)
               for e in (p.get("report") or {}).get("events") or []
               if isinstance(e, dict) and e.get("severity") in ("high", "medium")]
    events = [e for e in notable if e.get("severity") == "high"]
    highs = [f"{e.get('phase')}: {e.get('summary')}"[:160] for e in events]
    located = [{"file": e.get("file"), "line": e.get("line"), "phase": e.get("phase"),
                "severity": e.get("severity"), "summary": str(e.get("summary"))[:160]}
               for e in notable]
    return {"exit": done.returncode, "verdict": level if isinstance(level, str) else None,
            "reasons": verdict.get("reasons") or [], "dynamic_highs": highs[:5],
            "notable_events": located[:1000],
            "decoys": bool(report.get("decoys")), "seconds": report.get("seconds")}


def deed_lines(sample) -> dict[str, list[int]]:
    """file -> the line numbers of the sample's deeds (its labels name them by text)."""
    lines = {}
    for name, pieces in sample.deeds.items():
        text = sample.files[name]
        numbers = [n for n, line in enumerate(text.splitlines(), 1)
                   if any(piece in line for piece in pieces)]
        assert numbers, (sample.name, name)
        lines[name] = numbers
    return lines


def at_deed(event: dict[str, Any], deeds: dict[str, list[int]]) -> bool:
    """Whether a report's event points at one of the deed lines."""
    where = str(event.get("file") or "")
    return any((where == name or where.endswith("/" + name)) and event.get("line") in lines
               for name, lines in deeds.items())


def in_package(event: dict[str, Any], deeds: dict[str, list[int]]) -> bool:
    """Whether the event is attributed to a file of the package's deeds (not pip, detain…)."""
    where = str(event.get("file") or "")
    return any(where == name or where.endswith("/" + name) for name in deeds)


def run(args: argparse.Namespace) -> dict[str, Any]:
    malicious = build_malicious(args.cache / "malicious")
    benign, missing = fetch_benign(args.cache / "benign", offline=args.offline)
    rows = []
    for sample, sdist in malicious:
        rows.append({"package": sample.name, "label": "malicious", "category": sample.category,
                     "what": sample.what, "sdist": sdist, "deeds": deed_lines(sample),
                     "hidden": sample.hidden})
    rows += [{"package": spec, "label": "benign", "category": "popular", "sdist": sdist}
             for spec, sdist in benign[:args.benign_limit]]
    if args.only:
        rows = [r for r in rows if r["package"] in args.only
                or r["package"].split("==")[0] in args.only]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each row's work is subprocesses
        list(pool.map(lambda row: measure(row, args), rows))
    return {"rows": rows, "missing": missing, "dynamic": args.dynamic}


def measure(row: dict[str, Any], args: argparse.Namespace) -> None:
    """Fill one row: its static highs, and with --dynamic its `detain package` outcome."""
    highs = static(row["sdist"])
    row["static"] = bool(highs)
    row["rules"] = sorted({f["rule"] for f in highs})
    row["where"] = [f"{f['file']}:{f['line']} {f['rule']}" for f in highs[:5]]
    if args.dynamic:
        row.update(dynamic(row["sdist"], args.timeout))
        print(f"{row['package']}: exit {row['exit']}, {row['verdict']}", file=sys.stderr,
              flush=True)
    row["sdist"] = str(row["sdist"])


def _rate(hits: int, total: int) -> str:
    return f"{hits}/{total} ({100 * hits / total:.0f}%)" if total else "0/0"


def _dynamic_flag(row: dict[str, Any]) -> bool | None:
    return None if row.get("exit") is None else row["exit"] != 0


def _verdict_flag(row: dict[str, Any]) -> bool | None:
    verdict = row.get("verdict")
    return None if verdict is None else verdict != "clean"


def _column(rows: list[dict[str, Any]], flag) -> str:
    seen = [flag(r) for r in rows]
    known = [s for s in seen if s is not None]
    return _rate(sum(known), len(known)) if known else "n/a"


def render(result: dict[str, Any]) -> None:
    rows = result["rows"]
    by_category: dict[str, list] = defaultdict(list)
    for row in rows:
        by_category[(row["label"], row["category"])].append(row)
    print(f"{'label':<10} {'category':<28} {'static':>12} {'dynamic':>12} {'verdict':>12}")
    for (label, category), group in sorted(by_category.items()):
        print(f"{label:<10} {category:<28} {_column(group, lambda r: r['static']):>12} "
              f"{_column(group, _dynamic_flag):>12} {_column(group, _verdict_flag):>12}")
    bad = [r for r in rows if r["label"] == "malicious"]
    good = [r for r in rows if r["label"] == "benign"]
    recall = sum(r["static"] for r in bad) / len(bad) if bad else 0.0
    flagged = sum(r["static"] for r in good) / len(good) if good else 0.0
    print(f"\nstatic recall {_rate(sum(r['static'] for r in bad), len(bad))} "
          f"(goal >= {RECALL_GOAL:.0%}: {'met' if recall >= RECALL_GOAL else 'NOT met'}); "
          f"benign flagged high {_rate(sum(r['static'] for r in good), len(good))} "
          f"(goal <= {BENIGN_GOAL:.0%}: {'met' if flagged <= BENIGN_GOAL else 'NOT met'})")
    if not result["dynamic"]:
        print("dynamic and verdict: n/a (run with --dynamic: detain package per sdist)")
    for row in bad:
        if not row["static"]:
            print(f"  missed: {row['package']} ({row['category']}: {row['what']})")
    for row in good:
        if row["static"]:
            print(f"  benign flagged: {row['package']}: {', '.join(row['where'])}")
    for row in bad if result["dynamic"] else ():
        if row.get("exit") == 0 or row.get("exit") is None:
            print(f"  dynamic miss: {row['package']} ({row['category']}): exit {row['exit']}, "
                  f"verdict {row.get('verdict')} {row.get('note') or ''}")
    for row in good if result["dynamic"] else ():
        if row.get("exit") != 0 or row.get("verdict") != "clean" or row.get("dynamic_highs"):
            print(f"  benign not clean: {row['package']}: exit {row['exit']}, verdict "
                  f"{row.get('verdict')}; {'; '.join(row.get('reasons') or [])} "
                  f"{'; '.join(row.get('dynamic_highs') or [])}")
    if result["dynamic"]:
        _render_attribution(bad)
        decoyed = sum(bool(r.get("decoys")) for r in rows)
        print(f"  decoy credentials were present in {decoyed}/{len(rows)} dynamic runs")
    rules = Counter(rule for r in good for rule in r["rules"])
    if rules:
        print("  rules flagging benign packages: " + ", ".join(f"{k} x{v}" for k, v in
                                                             rules.most_common()))
    for note in result["missing"]:
        print(f"  not in the corpus: {note}")


def _render_attribution(bad: list[dict[str, Any]]) -> None:
    """The issue's dynamic goal: every runnable behaviour observed, >= 95% at its file:line.

    Per sample whose deed runs here: located when a notable event (medium or high, from
    the audit hook or the outside trace) points at a deed line; observed when located or
    when the report has any high event. Per event: of the notable events attributed to a
    file with deeds, how many point at a deed line (the rest: another line of the
    package)."""
    runnable = [r for r in bad if r.get("deeds") and r.get("exit") is not None]
    located = [r for r in runnable
               if any(at_deed(e, r["deeds"]) for e in r.get("notable_events") or [])]
    observed = [r for r in runnable if r in located or any(
        e.get("severity") == "high" for e in r.get("notable_events") or [])]
    events = [(r, e) for r in runnable for e in r.get("notable_events") or []
              if in_package(e, r["deeds"])]
    right = sum(at_deed(e, r["deeds"]) for r, e in events)
    share = len(located) / len(runnable) if runnable else 0.0
    print(f"\ndynamic: runnable behaviours observed {_rate(len(observed), len(runnable))}; "
          f"at the right file:line {_rate(len(located), len(runnable))} (goal >= 95%: "
          f"{'met' if share >= 0.95 else 'NOT met'}); notable events in the package's deed "
          f"files at a deed line {_rate(right, len(events))}")
    for row in runnable:
        if row not in located:
            seen = "; ".join(f"{e['file']}:{e['line']} {e['summary'][:60]}"
                             for e in (row.get("notable_events") or [])[:4]) or "no event"
            print(f"  not located: {row['package']} (deeds {row['deeds']}): {seen}")
    hidden = [r for r in bad if r.get("hidden")]
    if hidden:
        print(f"  not runnable here ({len(hidden)}): " + "; ".join(
            f"{r['package']}: {r['hidden']}" for r in hidden))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"default {CACHE}")
    parser.add_argument("--offline", action="store_true",
                        help="use only the benign sdists already in the cache")
    parser.add_argument("--dynamic", action="store_true",
                        help="also run `detain package` on every sdist (slow)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per `detain package` run (default 600)")
    parser.add_argument("--json", type=Path, help="also write every row as JSON here")
    parser.add_argument("--benign-limit", type=int, metavar="N",
                        help="only the first N benign projects (every malicious sample runs)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="packages measured at once (default 1; each is its own sandboxes)")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=[],
                        help="only these packages (sample names, or benign project names)")
    args = parser.parse_args()
    result = run(args)
    render(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
