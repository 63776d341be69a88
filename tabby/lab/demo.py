"""`make demo`: Tabby at work in about a minute - routing, BGP, policy - on one machine.

    sudo .venv/bin/python -m tabby.lab.demo          # KEEP=1 leaves the lab up to explore

Brings up a 3-node lab (embedded datastore, no encapsulation: plain BGP routing), shows
the nodes and their BGP sessions, probes every pair of workloads (all allowed), applies
examples/demo-policy.yaml (default deny in namespace shop, frontend -> backend on port 80
allowed), probes again and checks reality against `tabby policy matrix`, explains one
denied flow, and removes the lab. Every step is the real `tabby` command, printed first.
Exits 0 when every step did what it should.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.syntax import Syntax

from tabby.lab.state import LabError

DEMO_NAME = "demo"
POLICY = Path(__file__).resolve().parents[2] / "examples" / "demo-policy.yaml"
POLICY_TIMEOUT = 30.0

console = Console(highlight=False)


def heading(n: int, text: str) -> None:
    console.print()
    console.rule(f"[bold cyan]{n}. {text}", align="left")


def run(*argv: str, expect: int | None = 0) -> int:
    """Print `$ tabby ...` and run it in this process, as the user would in a shell."""
    from tabby.cli.main import main

    console.print(f"[bold]$ tabby {' '.join(argv)}[/bold]", soft_wrap=True)
    rc = main(list(argv))
    if expect is not None and rc != expect:
        raise DemoFailed(f"`tabby {' '.join(argv)}` exited {rc}")
    return rc


class DemoFailed(RuntimeError):
    pass


def _wait_for_policy(state: object, deny_expected: bool) -> float:
    """Until the probe agrees with `policy matrix` (the agents program policy in the
    background); returns how long that took."""
    from tabby.lab import matrix

    t0 = time.monotonic()
    while True:
        cmp = matrix.compare(state, "tcp", 80, timeout=0.5)  # type: ignore[arg-type]
        allowed, total = cmp.counts()
        if cmp.agree and (allowed < total) == deny_expected:
            return time.monotonic() - t0
        if time.monotonic() - t0 > POLICY_TIMEOUT:
            raise DemoFailed(
                f"after {POLICY_TIMEOUT:.0f}s the probe still differs from the policy matrix "
                f"for {len(cmp.mismatches)} pairs"
            )
        time.sleep(0.3)


def demo(name: str, keep: bool) -> float:
    """Run the demo; returns how long `lab up` took."""
    from tabby.lab import checks, cluster
    from tabby.lab.state import LabState, lab_dir

    checks.check_system("sqlite")
    if not POLICY.exists():
        raise DemoFailed(f"demo policy {POLICY} is missing (run from a checkout)")
    n = [] if name == "tabby" else ["--name", name]
    if (lab_dir(name) / "lab.json").exists():
        console.print(f"a lab {name!r} from an earlier run (KEEP=1?) is up: removing it first")
        cluster.down(name)

    heading(1, "A 3-node cluster: namespaces, agents, BIRD, workloads via tabby-cni")
    t0 = time.monotonic()
    run("lab", "up", *n, "--nodes", "3", "--workloads-per-node", "2")
    up_time = time.monotonic() - t0
    state = LabState.load(name)
    os.environ["TABBY_DATASTORE"] = state.datastore_url  # what `eval "$(tabby lab env)"` does
    console.print(f'[bold]$ eval "$(tabby lab env{" --name " + name if n else ""})"[/bold]')
    console.print(f"[dim]TABBY_DATASTORE={state.datastore_url}[/dim]")
    try:
        heading(2, "Routes: node1 learned the other nodes' blocks over BGP (BIRD)")
        run("lab", "exec", *n, "node1", "--", "ip", "route", "show", "proto", "bird")

        heading(3, "No policy yet: every workload reaches every other one")
        run("lab", "probe", *n)

        heading(4, "Apply a policy set: default deny in 'shop', frontend -> backend allowed")
        console.print(Syntax(POLICY.read_text(), "yaml", theme="ansi_dark",
                             background_color="default", word_wrap=True))
        run("apply", "-f", str(POLICY))
        took = _wait_for_policy(state, deny_expected=True)
        console.print(f"[dim](the agents programmed it in {took:.1f}s)[/dim]")

        heading(5, "The probe again, checked pair by pair against `tabby policy matrix`")
        run("lab", "probe", *n)

        heading(6, "Why can't db-1 reach backend-1?")
        src, dst = state.find_workload("db-1").key, state.find_workload("backend-1").key
        run("policy", "explain", "--from", src, "--to", dst, "--port", "80")
    finally:
        heading(7, "Clean up" if not keep else "Keeping the lab (KEEP=1)")
        if keep:
            flag = f" --name {name}" if n else ""
            backend = state.find_workload("backend-1").ip
            console.print(
                f"The lab is still up. Explore it (as root):\n"
                f"  eval \"$(.venv/bin/tabby lab env{flag})\"\n"
                f"  .venv/bin/tabby lab status{flag}\n"
                f"  .venv/bin/tabby lab probe{flag} --port 8080\n"
                f"  .venv/bin/tabby lab exec{flag} frontend-1 -- nc -zv -w1 {backend} 80"
                f"  # allowed\n"
                f"  .venv/bin/tabby lab exec{flag} db-1 -- nc -zv -w1 {backend} 80"
                f"  # denied: times out\n"
                f"  .venv/bin/tabby get networkpolicies -A\n"
                f"Remove it with:\n  .venv/bin/tabby lab down{flag}",
                markup=False, soft_wrap=True,
            )
        else:
            run("lab", "down", *n)
    return up_time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tabby.lab.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default=DEMO_NAME, help=f"lab name (default {DEMO_NAME})")
    ap.add_argument("--keep", action="store_true", default=os.environ.get("KEEP") == "1",
                    help="leave the lab up afterwards (also KEEP=1)")
    args = ap.parse_args(argv)
    try:
        up_time = demo(args.name, args.keep)
    except (LabError, DemoFailed) as exc:
        console.print(f"[bold red]demo failed:[/bold red] {exc}", soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    console.print()
    console.print(f"[bold green]Demo done[/bold green]: a 3-node lab came up in {up_time:.1f}s, "
                  "and real connections matched `tabby policy matrix` before and after the "
                  "policy change.", soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
