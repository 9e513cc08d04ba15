"""``make bench``: run every benchmark, write ``benchmarks/results.json``, print a table.

Each ``bench_*.py`` script runs in its own process and prints JSON figures; this script
collects them into one list of ``{benchmark, name, value, limit, pass, ...}`` entries.
Exit code 1 if any figure misses its limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["cli", "convert", "io", "journey", "bisect", "growth", "fuzz", "zoo"]


def main() -> int:
    only = sys.argv[1:]
    results, started = [], time.perf_counter()
    for name in ORDER:
        if only and name not in only:
            continue
        script = HERE / f"bench_{name}.py"
        print(f"== {script.name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        start_json = proc.stdout.find("{")
        text = proc.stdout[start_json:] if start_json >= 0 else ""
        if proc.returncode != 0 or not text:
            results.append({"benchmark": name, "name": f"{name}_ran", "value": proc.returncode, "limit": 0,
                            "pass": False})
            continue
        for fig in json.loads(text)["figures"]:
            results.append({"benchmark": name, **fig})
        print(f"   {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if not only:
        minutes = (time.perf_counter() - started) / 60
        results.append({"benchmark": "run_all", "name": "make_bench_minutes", "value": round(minutes, 2),
                        "limit": 60, "pass": minutes <= 60})
    if not results:
        print(f"no benchmark matches {only}; known: {', '.join(ORDER)}", file=sys.stderr)
        return 2
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    width = max(len(r["name"]) for r in results)
    print(f"{'figure':{width}}  {'value':>12}  {'limit':>8}  pass")
    for r in results:
        limit = "-" if r["limit"] is None else f"{r['limit']:g}"
        verdict = {True: "yes", False: "NO", None: "-"}[r["pass"]]
        print(f"{r['name']:{width}}  {r['value']:>12.4g}  {limit:>8}  {verdict}")
    print(f"total {(time.perf_counter() - started) / 60:.1f} min; wrote {HERE / 'results.json'}")
    return 0 if all(r["pass"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
