#!/usr/bin/env python3
"""Fixed costs of starting sppcaffe: `import sppcaffe` and every tool's
`--help`, each a fresh process, best of --runs.

    python3 bench/tool_startup.py [--runs 5] [--root CHECKOUT --root OTHER_CHECKOUT]

Several --root give before/after columns on the same machine (e.g. an
older commit unpacked with `git archive`), timed in turn so that a burst
of load hits both.  Python
compiles a module on every import when it cannot cache the bytecode
(PYTHONDONTWRITEBYTECODE=1, set on the development machine): the line
printed first says whether that is so.
"""
import argparse
import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
from competing_load import load_averages  # noqa: E402


def best_seconds(cmd, runs, env):
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        best = min(best, time.perf_counter() - start)
        if result.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr.decode()[-2000:]}")
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--root", action="append",
                        help="a checkout whose tools are timed (default: this one); repeat "
                             "for columns side by side, timed in turn")
    args = parser.parse_args()
    roots = [os.path.abspath(r) for r in args.root or [os.path.dirname(BENCH)]]
    # Each checkout's own package first, whatever is installed.
    envs = [dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
            for root in roots]
    print(f"bytecode cache {'off' if os.environ.get('PYTHONDONTWRITEBYTECODE') else 'on'}; "
          f"best of {args.runs}, the checkouts timed in turn; load averages before: "
          f"{load_averages()}")
    print("| command | " + " | ".join(f"{root} s" for root in roots) + " |")
    print("|---|" + "---|" * len(roots))
    tools = sorted(os.listdir(os.path.join(roots[0], "tools")))
    commands = [("python -c pass", lambda root: [sys.executable, "-c", "pass"]),
                ("python -c 'import sppcaffe'",
                 lambda root: [sys.executable, "-c", "import sppcaffe"])]
    commands += [(f"tools/{name} --help",
                  lambda root, name=name: [sys.executable, os.path.join(root, "tools", name),
                                           "--help"]) for name in tools]
    for label, make in commands:
        best = [float("inf")] * len(roots)
        for _ in range(args.runs):
            for k, (root, env) in enumerate(zip(roots, envs)):
                best[k] = min(best[k], best_seconds(make(root), 1, env))
        print(f"| {label} | " + " | ".join(f"{b:.2f}" for b in best) + " |")
    print(f"load averages after: {load_averages()}")


if __name__ == "__main__":
    main()
