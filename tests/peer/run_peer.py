"""Winery's own test suite, against winery's SharedBase and against rdirdb's.

    make peer-test            # what CI runs; it calls this script as root

Runs the ``swh/objstorage/tests/winery/`` folder of the installed
swh-objstorage twice, at the same time, as an unprivileged user (winery's
fixtures start PostgreSQL with initdb, which refuses root, and its directory
pools rely on os.access, which lies to root):

* the baseline, with winery's own SharedBase;
* the candidate, with rdirdb's swapped in by the ``winery_swap`` plugin.

It fails when a test that passes with winery's SharedBase does not pass with
ours, run once more on its own: a few of winery's tests race threads against
each other (test_winery_add_concurrent counts the shards its writers happened
to lock), and one failure there leaves threads behind that fail every later
test's teardown. A test that passes on that second run is reported as flaky,
by name, and does not fail the run. The baseline is measured in the same run, not read from a committed
list, so a change of environment (Ceph present or not, another PostgreSQL)
moves both sides alike. It must itself be sound: it fails if winery's own
SharedBase fails a test here (the environment is broken, and comparing
against it would prove nothing) or passes fewer than ``--min-passes`` tests
(tests silently skipped would shrink what is compared).
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLOSING = re.compile(r"^=* ?\d+ (passed|failed|errors?|skipped)\b.* in [\d.]+s")
WINERY_TESTS = "swh/objstorage/tests/winery"
IMPLEMENTATIONS = ("winery", "rdirdb")


def outcomes(junit_xml: Path) -> dict[str, str]:
    """``{test id: passed|failed|error|skipped}`` from a JUnit report."""
    return {f"{case.get('classname')}::{case.get('name')}": _outcome(case)
            for case in ET.parse(junit_xml).iter("testcase")}


def _outcome(case: ET.Element) -> str:
    tags = {child.tag for child in case}
    if "error" in tags:  # also a test that passed but whose teardown failed
        return "error"
    if "failure" in tags:
        return "failed"
    return "skipped" if "skipped" in tags else "passed"


def node_id(test_id: str) -> str:
    """pytest's node id of a JUnit ``classname::name``."""
    classname, name = test_id.split("::")
    parts = classname.split(".")
    module = next(i for i, part in enumerate(parts) if part.startswith("test_"))
    return "::".join(["/".join(parts[:module + 1]) + ".py", *parts[module + 1:], name])


def start_suite(label: str, implementation: str, workdir: Path, user: str, pg_ctl: str, arguments: list[str]):
    """Starts one pytest run (``arguments``: options and tests) as ``user``;
    returns (process, log path, report path), named after ``label``.

    The suite is the installed one; ``workdir`` holds the plugin (the user may
    not be able to read this checkout), the pytest temporary directories
    (PostgreSQL's data directory among them), the log and the report."""
    site = sysconfig.get_paths()["purelib"]
    log, report = workdir / f"{label}.log", workdir / f"{label}.xml"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(workdir / "plugin"),
        "RDIRDB_PEER_SHAREDBASE": implementation,
    }
    command = [
        "runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
        sys.executable, "-m", "pytest", "-c", str(workdir / "plugin" / "pytest.ini"), "--rootdir", site,
        "-p", "winery_swap", f"--basetemp={workdir / ('tmp-' + label)}",
        f"--postgresql-exec={pg_ctl}", f"--junitxml={report}", "-q", "-rfE", *arguments,
    ]
    process = subprocess.Popen(command, cwd=site, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return process, log, report


def finish(implementation: str, process: subprocess.Popen, log: Path, report: Path) -> dict[str, str] | None:
    """Waits for a run, prints its summary; its outcomes, None without a report."""
    process.wait()
    lines = log.read_text(errors="replace").splitlines()
    print(f"\n== winery's suite with {implementation}'s SharedBase (exit {process.returncode}): {log}")
    # pytest's short summary (-rfE) and its closing line.
    print("\n".join(line for line in lines if line.startswith(("FAILED", "ERROR")) or CLOSING.search(line)))
    if not report.exists():
        print("\n".join(lines[-60:]))
        print(f"run_peer: the {implementation} run produced no report")
        return None
    return outcomes(report)


def failures(log: Path, most: int = 400) -> str:
    """The start of the FAILURES section of a pytest log (one failure can
    cascade into hundreds of teardown errors)."""
    lines = log.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if " FAILURES " in line or " ERRORS " in line), 0)
    return "\n".join(lines[start:start + most])


def find_pg_ctl() -> str:
    """The newest PostgreSQL server's pg_ctl (Debian installs it off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if found:
        return str(found[-1])
    on_path = shutil.which("pg_ctl")
    if on_path is None:
        sys.exit("run_peer: no pg_ctl (install Debian's postgresql package)")
    return on_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", default="rdirdb-peer", help="the unprivileged user that runs the suites")
    parser.add_argument("--pg-ctl", default=None, help="PostgreSQL's pg_ctl (default: the newest installed)")
    parser.add_argument("--min-passes", type=int, default=0,
                        help="fewest tests winery's own SharedBase must pass")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()
    try:
        pwd.getpwnam(args.user)
    except KeyError:
        sys.exit(f"run_peer: no user {args.user} (make peer-test creates it)")
    pg_ctl = args.pg_ctl or find_pg_ctl()

    workdir = Path(tempfile.mkdtemp(prefix="rdirdb-peer-"))
    (workdir / "plugin").mkdir()
    for name in ("winery_swap.py", "pytest.ini"):
        shutil.copy(HERE / name, workdir / "plugin" / name)
    shutil.chown(workdir, user=args.user)
    print(f"run_peer: winery's suite as {args.user}, PostgreSQL {pg_ctl}, work directory {workdir}", flush=True)
    options = [*args.pytest_args, WINERY_TESTS]
    runs = {impl: start_suite(impl, impl, workdir, args.user, pg_ctl, options) for impl in IMPLEMENTATIONS}
    results = {impl: finish(impl, *run) for impl, run in runs.items()}
    if None in results.values():
        return 1

    baseline, ours = results["winery"], results["rdirdb"]
    passed = sorted(t for t, o in baseline.items() if o == "passed")
    broken = sorted(t for t, o in baseline.items() if o in ("failed", "error"))
    regressions = sorted(t for t in passed if ours.get(t) != "passed")
    flaky: list[str] = []
    if regressions:
        print(f"\n{len(regressions)} of the baseline's passes did not pass with rdirdb's SharedBase: once more")
        rerun = start_suite("rdirdb-again", "rdirdb", workdir, args.user, pg_ctl,
                            [*args.pytest_args, *(node_id(t) for t in regressions)])
        again = finish("rdirdb", *rerun)
        if again is None:
            return 1
        flaky = [t for t in regressions if again.get(t) == "passed"]
        regressions = [t for t in regressions if again.get(t) != "passed"]
    print(f"\nbaseline (winery's SharedBase): {len(passed)} passed, {len(broken)} failed, "
          f"{len(baseline) - len(passed) - len(broken)} skipped")
    print(f"rdirdb's SharedBase: {sum(o == 'passed' for o in ours.values())} passed, "
          f"{len(regressions)} of the baseline's passes not passed")
    status = 0
    if broken:
        print("run_peer: winery's own SharedBase fails here; the environment is broken:\n  " + "\n  ".join(broken))
        status = 1
    if len(passed) < args.min_passes:
        print(f"run_peer: winery's own SharedBase passed {len(passed)} tests, expected at least {args.min_passes}")
        status = 1
    if flaky:
        print("run_peer: FLAKY, failed with rdirdb's SharedBase, then passed on their own:\n  " + "\n  ".join(flaky))
        print(failures(runs["rdirdb"][1]))
    if regressions:
        print("run_peer: passed with winery's SharedBase, not with rdirdb's (twice):\n  " + "\n  ".join(
            f"{t} ({ours.get(t, 'not run')})" for t in regressions))
        print(failures(workdir / "rdirdb-again.log"))
        status = 1
    if status == 0 and not flaky:
        shutil.rmtree(workdir, ignore_errors=True)
        print("run_peer: rdirdb's SharedBase passes every test winery's own passes")
    return status


if __name__ == "__main__":
    sys.exit(main())
