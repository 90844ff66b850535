"""Compare two `sdzero eval` reports on the same held-out questions: paired differences with bootstrap CIs,
and how often first attempts contain the control phrases (the "revision words" diagnostic).

    python scripts/compare_evals.py BEFORE.json AFTER.json [--boot 10000]
"""

import argparse
import json
import random


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--boot", type=int, default=10000)
    args = ap.parse_args()
    a, b = (json.load(open(p)) for p in (args.before, args.after))
    qa, qb = ({q["id"]: q for q in r["questions"]} for r in (a, b))
    if qa.keys() != qb.keys():
        raise SystemExit("the two reports are not on the same questions")
    ids = sorted(qa)
    diffs = {"avg@k": [sum(qb[i]["rewards"]) / len(qb[i]["rewards"]) - sum(qa[i]["rewards"]) / len(qa[i]["rewards"])
                       for i in ids]}
    if all("greedy_reward" in qa[i] and "greedy_reward" in qb[i] for i in ids):
        diffs["greedy"] = [qb[i]["greedy_reward"] - qa[i]["greedy_reward"] for i in ids]
    rng = random.Random(0)
    for name, d in diffs.items():
        mean = sum(d) / len(d)
        boots = sorted(sum(rng.choice(d) for _ in d) / len(d) for _ in range(args.boot))
        lo, hi = boots[int(0.025 * args.boot)], boots[int(0.975 * args.boot) - 1]
        print(f"{name}: {mean:+.4f} (paired bootstrap 95% CI {lo:+.4f} .. {hi:+.4f}) over {len(d)} questions")
    phrases = {**a.get("control_phrases", {}), **b.get("control_phrases", {})}
    for tag, rep in (("before", a), ("after", b)):
        samples = [s for q in rep["questions"] for s in q.get("samples", [])]
        counts = {k: sum(phrases[k].lower()[:20] in s.lower() for s in samples) for k in ("correct", "wrong")
                  if k in phrases}
        print(f"{tag}: first attempts containing the control phrases {counts} of {len(samples)}")


if __name__ == "__main__":
    main()
