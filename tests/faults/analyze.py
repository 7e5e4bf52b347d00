#!/usr/bin/env python3
"""Checks the history a checker.sh run left in its work directory and prints one line
`RESULT {json}`; exit status 1 on any violation or when the workers did not finish.

Files (see crit.sh and checker.sh): state "count last" then the landed writes "token run
pid" (in landing order), events "time kind ...", faults "time kind token run",
fenced "time op token seen last run", runs "run rc end start", violations (free text, one per line), inside (marker).

Checks: no violation recorded by a critical section or the injector; the final count equals
the number of landed writes; landed tokens strictly increase; every run that exited 0 landed
exactly once and no run landed twice (no lost and no doubled update); every worker reached
ITERATIONS successful runs (liveness); a run whose pmxcfs directory was removed exited 75 (lock lost);
a marker left at the end belongs to a dead process or a run declared lost.

JSON fields: backend, fault, target, workers, iterations, runs (lockfn run started),
ok_runs (exited 0), ops (landed writes = final count), faults (injected; faults_missed: a
SIGKILL that reached a `lockfn run` which had already exited), fenced (late reads
or writes rejected by the token check), superseded (holders found inside after their lock
was declared lost), lost_overlaps (entered while a holder whose lock the service had revoked, and which
learnt it, was still inside: not a violation), stale_markers (left by SIGKILLed holders), exit_codes {rc: n}, fault_outcomes {"KIND rc N":
count} (how the hit runs ended),
violations (count) and violation_samples, recovery_s {n, median, max} (fault to the next
holder's entry; for a service fault, to the first entry of a run started after it),
lost_detect_s {n, median, max} (stop-holder: from SIGCONT of `lockfn run` to
its exit 75), final_acquire_s (a last `lockfn run TARGET -- true` after the workers: nothing
a fault left blocks for ever), duration_s, pass.
"""
import argparse
import json
import os
import statistics
import sys


def lines(path):
    try:
        with open(path) as f:
            return [ln.split() for ln in f if ln.strip()]
    except FileNotFoundError:
        return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    for a in ("label", "fault", "target"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    a = ap.parse_args()
    d = a.dir
    problems = []
    try:
        with open(os.path.join(d, "violations")) as f:
            problems += [ln.rstrip("\n") for ln in f if ln.strip()]
    except FileNotFoundError:
        pass

    state = lines(os.path.join(d, "state"))
    count, last = (int(x) for x in state[0][:2])
    landed = state[1:]
    if count != len(landed):
        problems.append(f"final count {count} != {len(landed)} landed writes")
    toks = [int(x[0]) for x in landed]
    for i in range(1, len(toks)):
        if toks[i] <= toks[i - 1]:
            problems.append(f"landed token {toks[i]} not above the previous {toks[i - 1]}")
    if toks and toks[-1] != last:
        problems.append(f"state's last token {last} is not the last landed {toks[-1]}")
    landed_runs = {}
    for x in landed:
        landed_runs[x[1]] = landed_runs.get(x[1], 0) + 1
    for r, n in landed_runs.items():
        if n > 1:
            problems.append(f"run {r} landed {n} times")

    runs = lines(os.path.join(d, "runs"))
    rc_of = {r[0]: int(r[1]) for r in runs}
    exit_codes = {}
    for r in runs:
        exit_codes[r[1]] = exit_codes.get(r[1], 0) + 1
    ok_runs = [r for r, rc in rc_of.items() if rc == 0]
    for r in ok_runs:
        if r not in landed_runs:
            problems.append(f"run {r} exited 0 but its increment is not in the final state (lost update)")
    per_worker = {}
    for r in ok_runs:
        w = r.split(".")[0]
        per_worker[w] = per_worker.get(w, 0) + 1
    incomplete = [
        f"worker {w}: {per_worker.get(str(w), 0)}/{a.iterations} runs succeeded"
        for w in range(a.workers)
        if per_worker.get(str(w), 0) < a.iterations
    ]

    # Two live holders at once: a violation unless the older one's lock had been revoked by
    # the service, which its lockfn run must have noticed (exit 75 or a "was lost" warning).
    lost_overlaps = 0
    for o in lines(os.path.join(d, "overlaps")):
        orun = o[3]
        try:
            with open(os.path.join(d, "w", orun + ".err")) as f:
                said_lost = "was lost" in f.read()
        except OSError:
            said_lost = False
        if rc_of.get(orun) == 75 or said_lost:
            lost_overlaps += 1
        else:
            problems.append(
                f"overlap: run {o[1]} (token {o[2]}) entered while run {orun} (token {o[4]}, "
                f"exit {rc_of.get(orun)}) was inside: {' '.join(o[5:])}"
            )

    events = lines(os.path.join(d, "events"))
    faults = lines(os.path.join(d, "faults"))
    enters = sorted((float(e[0]), e[2], e[3]) for e in events if len(e) > 3 and e[1] == "enter")
    start_of = {r[0]: float(r[3]) for r in runs if len(r) > 3}
    recovery = []
    outcomes = {}
    missed = 0
    for f in faults:
        t0, kind = float(f[0]), f[1]
        if kind != "kill-waiter" and len(f) > 3 and f[3] != "-":
            key = f"{kind} rc {rc_of.get(f[3])}"
            outcomes[key] = outcomes.get(key, 0) + 1
        if kind == "kill-holder" and rc_of.get(f[3]) != 128 + 9:
            # The SIGKILL reached a `lockfn run` that had already exited (a zombie not yet
            # reaped by its worker): not a holder's death.
            missed += 1
            continue
        if kind in ("kill-waiter",):
            continue
        tok = f[2] if len(f) > 2 else "-"
        if tok == "-":
            # A service fault (leader kill/restart): the first entry of a run that started
            # after it (one that acquired before it says nothing about the service).
            nxt = [t for t, tk, run in enters if t > t0 and start_of.get(run, 0) > t0]
        else:
            nxt = [t for t, tk, run in enters if t > t0 and tk != tok]
        if nxt:
            recovery.append(nxt[0] - t0)
        if kind == "rmdir":
            run = f[3]
            if rc_of.get(run) != 75:
                problems.append(
                    f"run {run}: its lock directory was removed, but lockfn run exited "
                    f"{rc_of.get(run)} (expected 75, lock lost)"
                )
    # How long a resumed `lockfn run` took to learn its lock was lost and end (exit 75).
    end_of = {r[0]: float(r[2]) for r in runs}
    detect = [
        end_of[c[2]] - float(c[0])
        for c in lines(os.path.join(d, "conts"))
        if rc_of.get(c[2]) == 75 and c[2] in end_of
    ]
    marker = lines(os.path.join(d, "inside"))
    if marker:
        opid, olfn, otok = marker[0][0], marker[0][1], marker[0][2]
        for pid in (opid, olfn):
            if os.path.exists(f"/proc/{pid}") and not os.path.exists(os.path.join(d, "invalid", otok)):
                try:
                    with open(f"/proc/{pid}/status") as s:
                        st = [ln for ln in s if ln.startswith("State:")][0].split()[1]
                except (OSError, IndexError):
                    st = "Z"
                if st not in ("Z", "X"):
                    problems.append(f"process {pid} of token {otok} still inside at the end")
    final = lines(os.path.join(d, "final"))
    final_s = None
    if not final or final[0][0] != "0":
        try:
            with open(os.path.join(d, "final.err")) as f:
                why = f.read().strip()[:300]
        except OSError:
            why = ""
        problems.append(f"a last lockfn run after the faults did not get the lock: {final[:1]} {why}")
    else:
        final_s = round(float(final[0][2]) - float(final[0][1]), 3)
    fenced = lines(os.path.join(d, "fenced"))
    res = {
        "backend": a.label,
        "fault": a.fault,
        "target": a.target,
        "workers": a.workers,
        "iterations": a.iterations,
        "runs": len(runs),
        "ok_runs": len(ok_runs),
        "ops": count,
        "faults": len(faults) - missed,
        "faults_missed": missed,
        "fenced": len(fenced),
        "fenced_writes": sum(1 for x in fenced if x[1] == "write"),
        "superseded": sum(1 for e in events if len(e) > 1 and e[1] == "superseded"),
        "lost_overlaps": lost_overlaps,
        "stale_markers": sum(1 for e in events if len(e) > 1 and e[1] == "stale"),
        "exit_codes": exit_codes,
        "fault_outcomes": outcomes,
        "violations": len(problems),
        "violation_samples": problems[:5],
        "incomplete": incomplete[:5],
        "recovery_s": {
            "n": len(recovery),
            "median": round(statistics.median(recovery), 3) if recovery else None,
            "max": round(max(recovery), 3) if recovery else None,
        },
        "lost_detect_s": {
            "n": len(detect),
            "median": round(statistics.median(detect), 3) if detect else None,
            "max": round(max(detect), 3) if detect else None,
        },
        "final_acquire_s": final_s,
        "duration_s": round(a.end - a.start, 1),
    }
    res["pass"] = not problems and not incomplete
    print("RESULT " + json.dumps(res, sort_keys=True))
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
