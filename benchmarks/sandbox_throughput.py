"""Sandbox throughput: programs per second through the pool, measured side by side in one run.

    python benchmarks/sandbox_throughput.py [--programs 400]

Runs the same batch of small Python programs (each prints a number; the verdict compares it) through
pools of 1, 2 and 4 workers with full isolation, and through 4 workers with namespaces off (the
fallback), and through 4 workers without the per-job cgroups (what the budgets cost), then prints
programs/s and ratios against the 1-worker pool. It also reports which isolation the machine allowed.
"""

import argparse
import time

from sdzero.sandbox import Job, Limits, SandboxPool


def measure(workers: int, programs: int, use_namespaces: bool, use_cgroups: bool) -> tuple[float, dict]:
    jobs = [Job(files={"main.py": f"print(sum(range({i})))"}, expected_stdout=str(sum(range(i))))
            for i in range(programs)]
    with SandboxPool(workers=workers, limits=Limits(wall_s=20, cpu_s=5), use_namespaces=use_namespaces,
                     use_cgroups=use_cgroups) as pool:
        isolation = pool.sandbox.isolation()
        t0 = time.perf_counter()
        verdicts = pool.map(jobs)
        elapsed = time.perf_counter() - t0
    bad = [v for v in verdicts if v.status != "pass"]
    if bad:
        raise SystemExit(f"{len(bad)} of {programs} programs did not pass: {bad[0]}")
    return programs / elapsed, isolation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=400)
    args = ap.parse_args()
    rows = []
    for workers, ns, cg in [(1, True, True), (2, True, True), (4, True, True), (4, False, True), (4, True, False)]:
        rate, iso = measure(workers, args.programs, ns, cg)
        rows.append((workers, ns, rate, iso))
    base = rows[0][2]
    print(f"isolation allowed here: {rows[0][3]}")
    print(f"{'workers':>7}  {'isolation':<40}  {'programs/s':>10}  {'vs 1 worker':>11}")
    for workers, ns, rate, iso in rows:
        label = "namespaces" if iso.get("namespaces") else "fallback (no namespaces)"
        label += f", cgroup {iso['cgroup']}" if iso.get("job_memory") else ", no job cgroups"
        print(f"{workers:>7}  {label:<40}  {rate:>10.1f}  {rate / base:>10.2f}x")


if __name__ == "__main__":
    main()
