"""Break down the verdicts of a code-task `sdzero eval` report: statuses, error kinds, code fences.

    python scripts/summarize_verdicts.py outputs/eval-embedded-humaneval.json
"""

import argparse
import collections
import json
import re


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    report = json.load(open(ap.parse_args().report))
    verdicts = [v for q in report["questions"] for v in q.get("verdicts", [])]
    if not verdicts:
        raise SystemExit("this report has no verdicts (not a code task)")
    print("statuses:", dict(collections.Counter(v["status"] for v in verdicts)))
    kinds = collections.Counter()
    for v in verdicts:
        if v["status"] == "error":
            names = re.findall(r"^(\w+(?:Error|Exception)\w*)", v["stderr_tail"], re.M)
            kinds[names[-1] if names else v["reason"]] += 1
    print("errors by kind:", dict(kinds.most_common()))
    samples = [s for q in report["questions"] for s in q.get("samples", [])]
    print(f"samples with a code fence: {sum('```' in s for s in samples)} of {len(samples)}")


if __name__ == "__main__":
    main()
