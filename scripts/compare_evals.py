"""Compare two `sdzero eval` reports on the same held-out questions: paired differences with bootstrap CIs,
and how often first attempts contain the control phrases (the "revision words" diagnostic).

    python scripts/compare_evals.py BEFORE.json AFTER.json [--boot 10000]
    python scripts/compare_evals.py B0.json A0.json B1.json A1.json ...   # several seeds: pairs pooled

With several (before, after) pairs the differences of all pairs are pooled into one interval (each pair on
its own questions; a question shared by two seeds counts twice, as two independent pairs).
"""

import argparse
import json
import random


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="BEFORE.json AFTER.json, and more such pairs to pool")
    ap.add_argument("--boot", type=int, default=10000)
    args = ap.parse_args()
    if len(args.reports) % 2:
        raise SystemExit("give reports in (before, after) pairs")
    diffs: dict[str, list[float]] = {"avg@k": [], "greedy": []}
    for before, after in zip(args.reports[::2], args.reports[1::2]):
        a, b = (json.load(open(p)) for p in (before, after))
        qa, qb = ({q["id"]: q for q in r["questions"]} for r in (a, b))
        if qa.keys() != qb.keys():
            raise SystemExit(f"{before} and {after} are not on the same questions")
        ids = sorted(qa)
        diffs["avg@k"] += [sum(qb[i]["rewards"]) / len(qb[i]["rewards"]) -
                           sum(qa[i]["rewards"]) / len(qa[i]["rewards"]) for i in ids]
        if diffs["greedy"] is not None and all("greedy_reward" in qa[i] and "greedy_reward" in qb[i] for i in ids):
            diffs["greedy"] += [qb[i]["greedy_reward"] - qa[i]["greedy_reward"] for i in ids]
        else:
            diffs["greedy"] = None
    diffs = {k: v for k, v in diffs.items() if v}
    rng = random.Random(0)
    for name, d in diffs.items():
        mean = sum(d) / len(d)
        boots = sorted(sum(rng.choice(d) for _ in d) / len(d) for _ in range(args.boot))
        lo, hi = boots[int(0.025 * args.boot)], boots[int(0.975 * args.boot) - 1]
        print(f"{name}: {mean:+.4f} (paired bootstrap 95% CI {lo:+.4f} .. {hi:+.4f}) over {len(d)} (question, pair) differences")
    if len(args.reports) > 2:
        return  # the phrase diagnostic is per pair of reports
    phrases = {**a.get("control_phrases", {}), **b.get("control_phrases", {})}
    for tag, rep in (("before", a), ("after", b)):
        samples = [s for q in rep["questions"] for s in q.get("samples", [])]
        counts = {k: sum(phrases[k].lower()[:20] in s.lower() for s in samples) for k in ("correct", "wrong")
                  if k in phrases}
        print(f"{tag}: first attempts containing the control phrases {counts} of {len(samples)}")


if __name__ == "__main__":
    main()
