#!/usr/bin/env python3
"""Reads one JSON object per line on stdin (RESULT lines of checker.sh, or {backend, fault,
status, reason} for cases not run), writes {"cases": [...]} to the file named by argv[1] and
prints a table."""
import json
import sys


def main():
    rows = [json.loads(ln) for ln in sys.stdin if ln.strip()]
    with open(sys.argv[1], "w") as f:
        json.dump({"cases": rows}, f, indent=1, sort_keys=True)
        f.write("\n")
    hdr = ("backend", "fault", "ops", "runs", "faults", "viol", "fenced", "supersd", "recovery s med/max", "lost-detect s", "result")
    fmt = "{:<16}{:<16}{:>6}{:>6}{:>7}{:>6}{:>7}{:>8}{:>20}{:>14}  {}"
    print()
    print(fmt.format(*hdr))
    for r in rows:
        if "status" in r:
            print(fmt.format(r["backend"], r["fault"], "", "", "", "", "", "", "", "", r["status"] + ": " + r["reason"]))
        elif "backend" not in r:
            print("{:<30}  FAIL: {}".format(r.get("case", "?"), r.get("reason")))
        else:
            rec = r["recovery_s"]
            rs = "{}/{}".format(rec["median"], rec["max"]) if rec["n"] else "-"
            ld = r.get("lost_detect_s", {"n": 0})
            lds = "{}/{}".format(ld["median"], ld["max"]) if ld["n"] else "-"
            res = "ok" if r["pass"] else "FAIL " + "; ".join(r["violation_samples"] + r["incomplete"])[:200]
            print(fmt.format(r["backend"], r["fault"], r["ops"], r["runs"], r["faults"], r["violations"],
                             r["fenced"], r["superseded"], rs, lds, res))
    print("report: " + sys.argv[1])


if __name__ == "__main__":
    main()
