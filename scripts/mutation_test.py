#!/usr/bin/env python
"""Mutation testing of the fast test tier with a catalogue of planted bugs.

Each mutant of ``tests/mutants/catalogue.yaml`` replaces one exact snippet of one file. For every
mutant the tool copies the repository (tracked and untracked, not ignored, files) to a temporary
folder once per job, plants the bug there -- never in the checkout --, runs the fast tier

    pytest -m "not slow" -x -q -p no:cacheprovider --ignore tests/test_mutation_catalogue.py

in the copy with ``PYTHONPATH=<copy>:<copy>/projects/{Propot,CPCL,CSDN}`` in front (the editable
install's import finder comes after ``PYTHONPATH``; an import check and the ``sanity`` mutants
prove that the copy's code is what the tests import), and records whether a test failed
(killed), none did (survived) or the run exceeded the timeout. The mutant's ``tests`` run first,
then the rest of the tier, so a killed mutant usually stops within seconds. A kill counts only if
the killing test passes without the mutant (else that test is deselected and the mutant rerun).

    python scripts/mutation_test.py                   # the whole catalogue
    python scripts/mutation_test.py --only ID [ID...] # some mutants again
    python scripts/mutation_test.py --category wiring # every wiring-N category
    python scripts/mutation_test.py --list            # the catalogue, no test run
    python scripts/mutation_test.py --check           # every snippet matches exactly once

Exit status: 0 when every selected mutant is killed, 1 when one survives (or times out), 2 for a
stale catalogue or a failing unmutated tier, 3 when a sanity mutant survives (the copy is not
what the tests import). The report (a table and the kill rate) is printed and written as JSON
(``--report``, default ``output/mutation/report.json``). docs/testing.md describes the practice.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CATALOGUE = REPO / "tests" / "mutants" / "catalogue.yaml"
DEFAULT_REPORT = REPO / "output" / "mutation" / "report.json"
CATEGORIES = ("sanity", "formula") + tuple(f"wiring-{k}" for k in range(1, 8))
PROJECT_DIRS = ("projects/Propot", "projects/CPCL", "projects/CSDN")
PACKAGES = {"fastreid_ext": "fastreid_ext", "propot": "projects/Propot/propot"}
PACKAGES.update(cpcl="projects/CPCL/cpcl", csdn="projects/CSDN/csdn")
SELF_TEST = "tests/test_mutation_catalogue.py"  # checks the catalogue against the tree: ignored
FIRST_ENV = "MUTATION_TEST_FIRST"  # test files the plugin below moves to the front
_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class CatalogueError(ValueError):
    """A malformed catalogue, or a snippet that no longer matches exactly once."""


@dataclass(frozen=True)
class Mutant:
    """One planted bug: ``old`` (exactly once in ``file``) becomes ``new``."""

    id: str
    category: str
    file: str
    old: str
    new: str
    description: str
    tests: Tuple[str, ...] = ()


@dataclass
class Result:
    """Outcome of one mutant: ``status`` is killed, survived, timeout or error."""

    id: str
    category: str
    file: str
    status: str
    killer: str
    seconds: float
    detail: str = ""


# ---------------------------------------------------------------------------- catalogue
def load_catalogue(path: Path = DEFAULT_CATALOGUE) -> List[Mutant]:
    """The mutants of ``path``; a :class:`CatalogueError` names the entry and field at fault."""
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get("mutants"), list):
        raise CatalogueError(f"{path}: expected a mapping with a 'mutants' list")
    mutants, seen = [], set()
    for k, entry in enumerate(data["mutants"]):
        where = f"{path}: mutant {k} ({entry.get('id', '?') if isinstance(entry, dict) else '?'})"
        if not isinstance(entry, dict):
            raise CatalogueError(f"{where}: not a mapping")
        unknown = set(entry) - {f for f in Mutant.__dataclass_fields__}
        if unknown:
            raise CatalogueError(f"{where}: unknown field(s) {sorted(unknown)}")
        for field in ("id", "category", "file", "old", "new", "description"):
            if not isinstance(entry.get(field), str) or not entry[field]:
                raise CatalogueError(f"{where}: '{field}' must be a non-empty string")
        if not _ID.match(entry["id"]) or entry["id"] in seen:
            raise CatalogueError(f"{where}: 'id' must be unique, lower case, digits and '-'")
        if entry["category"] not in CATEGORIES:
            raise CatalogueError(f"{where}: 'category' must be one of {CATEGORIES}")
        if entry["old"] == entry["new"]:
            raise CatalogueError(f"{where}: 'new' equals 'old'")
        tests = entry.get("tests", [])
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise CatalogueError(f"{where}: 'tests' must be a list of test file paths")
        seen.add(entry["id"])
        mutants.append(Mutant(**{**entry, "tests": tuple(tests)}))
    return mutants


def mutate_text(text: str, mutant: Mutant) -> str:
    """``text`` with the mutant's one ``old`` occurrence replaced by ``new``."""
    count = text.count(mutant.old)
    if count != 1:
        raise CatalogueError(
            f"mutant '{mutant.id}': its 'old' snippet occurs {count} times in {mutant.file} "
            "(exactly once expected); update tests/mutants/catalogue.yaml"
        )
    return text.replace(mutant.old, mutant.new, 1)


def check_catalogue(mutants: Sequence[Mutant], root: Path = REPO) -> None:
    """Every mutant's file and hinted tests exist under ``root`` and its snippet occurs exactly
    once; one :class:`CatalogueError` lists every mutant at fault."""
    problems = []
    for m in mutants:
        path = root / m.file
        if not path.is_file():
            problems.append(f"mutant '{m.id}': file {m.file} does not exist")
            continue
        try:
            mutate_text(path.read_text(), m)
        except CatalogueError as exc:
            problems.append(str(exc))
        missing = [t for t in m.tests if not (root / t).is_file()]
        problems += [f"mutant '{m.id}': test file {t} does not exist" for t in missing]
    if problems:
        raise CatalogueError("stale catalogue:\n  " + "\n  ".join(problems))


def select(mutants: Sequence[Mutant], only: Sequence[str], category: Optional[str]):
    """The mutants named by ``--only`` (all if empty) in ``--category`` (``wiring``: every
    wiring-N); unknown ids are an error."""
    unknown = sorted(set(only) - {m.id for m in mutants})
    if unknown:
        raise CatalogueError(f"--only: unknown mutant id(s) {unknown}")
    out = [m for m in mutants if not only or m.id in only]
    if category:
        out = [m for m in out if m.category == category or m.category.startswith(category + "-")]
    return out


# ---------------------------------------------------------------------------- the copy
def repository_files(root: Path = REPO) -> List[str]:
    """Relative paths of the tracked and untracked, not ignored, files that exist."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({p for p in listing.split("\0") if p and (root / p).is_file()})


def make_copy(dest: Path, root: Path = REPO) -> None:
    for rel in repository_files(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)


def copy_env(copy: Path, first: Sequence[str] = ()) -> Dict[str, str]:
    """Environment of a test run in ``copy``: the copy's packages first on ``PYTHONPATH``."""
    paths = [str(copy)] + [str(copy / d) for d in PROJECT_DIRS] + [str(copy / "scripts")]
    old = os.environ.get("PYTHONPATH")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    env[FIRST_ENV] = os.pathsep.join(first)
    return env


def check_imports(copy: Path) -> None:
    """Each package imports from the copy (not the checkout the editable install points to)."""
    code = "import json, importlib; print(json.dumps({n: importlib.import_module(n).__file__ "
    code += f"for n in {sorted(PACKAGES)!r}}}))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=copy, env=copy_env(copy), capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"importing the copy's packages failed:\n{out.stderr[-3000:]}")
    files = json.loads(out.stdout.strip().splitlines()[-1])
    for name, rel in PACKAGES.items():
        if Path(files[name]).resolve() != (copy / rel / "__init__.py").resolve():
            raise RuntimeError(f"{name} is imported from {files[name]}, not from the copy {copy}")


# ---------------------------------------------------------------------------- test runs
def build_pytest_command(
    junit: Path, tests: Sequence[str] = (), extra: Sequence[str] = ()
) -> List[str]:
    cmd = [sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "mutation_test", "--ignore", SELF_TEST, f"--junitxml={junit}"]
    return cmd + list(extra) + list(tests)


def run_tests(copy: Path, cmd: List[str], first: Sequence[str], timeout: float):
    """``(exit status or None on timeout, output tail, seconds)``; on timeout the whole process
    group is killed."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=copy,
        env=copy_env(copy, first),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = None
    return rc, out[-4000:], time.monotonic() - start


def first_failure(junit: Path, output: str) -> Tuple[str, str]:
    """``(node id, first message line)`` of the first failing or erroring test: the node id from
    pytest's summary (``FAILED <id> - ...``), the message from the JUnit XML; ``("", message)``
    when nothing was collected (a conftest or import error)."""
    message = ""
    try:
        for case in ET.parse(junit).getroot().iter("testcase"):
            node = next(
                (n for n in (case.find("failure"), case.find("error")) if n is not None), None
            )
            if node is not None:
                lines = (node.get("message") or node.text or "").strip().splitlines()
                message = (lines[0] if lines else "")[:200]
                break
    except (OSError, ET.ParseError):
        pass
    lines = output.splitlines()
    for ln in lines:
        if ln.startswith(("FAILED ", "ERROR ")):
            return ln.split(" ", 1)[1].split(" - ", 1)[0].strip(), message
    errors = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    return "", message or (errors[-1] if errors else (lines[-1] if lines else ""))[:200]


def fails_unmutated(copy: Path, node_id: str, timeout: float) -> bool:
    """Whether test ``node_id`` also fails in the unmutated ``copy`` (a broken or flaky test, or
    a changed environment -- e.g. the installed package metadata -- not the planted bug)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node_id]
    rc, _, _ = run_tests(copy, cmd, (), timeout)
    return rc != 0


def run_mutant(m: Mutant, copy: Path, timeout: float, hinted_only: bool, extra) -> Result:
    """Plant ``m`` in ``copy``, run the tier, restore the file. A kill is confirmed by running
    the killing test without the mutant: a test that fails there too is deselected and the
    mutant runs again (up to three times), and the report names it."""
    path = copy / m.file
    original = path.read_text()
    junit = copy.parent / f"{copy.name}-junit.xml"
    deselected: List[str] = []
    total = 0.0
    for _ in range(4):
        path.write_text(mutate_text(original, m))
        junit.unlink(missing_ok=True)
        args = list(extra) + [a for t in deselected for a in ("--deselect", t)]
        try:
            tests = m.tests if hinted_only else ()
            cmd = build_pytest_command(junit, tests, args)
            rc, out, secs = run_tests(copy, cmd, m.tests, timeout)
        finally:
            path.write_text(original)
        total += secs
        note = f"deselected, failing without the mutant: {deselected}" if deselected else ""
        if rc is None:
            return Result(m.id, m.category, m.file, "timeout", "", total, f"over {timeout:.0f} s")
        if rc == 0:
            return Result(m.id, m.category, m.file, "survived", "", total, note)
        if rc == 5:
            return Result(m.id, m.category, m.file, "error", "", total, "no test collected")
        killer, message = first_failure(junit, out)
        if not killer or not fails_unmutated(copy, killer, timeout):
            detail = "; ".join(x for x in (message, note) if x)
            return Result(
                m.id, m.category, m.file, "killed", killer or "(collection)", total, detail
            )
        deselected.append(killer)
    detail = f"tests failing without the mutant: {deselected}"
    return Result(m.id, m.category, m.file, "error", "", total, detail)


# ---------------------------------------------------------------------------- report
def summarise(results: Sequence[Result]) -> Dict[str, object]:
    """Counts, kill rate (killed + timeout over non-sanity mutants without errors) per category."""

    def rate(rs: Sequence[Result]) -> Dict[str, object]:
        counted = [r for r in rs if r.status != "error"]
        detected = sum(r.status in ("killed", "timeout") for r in counted)
        return {
            "mutants": len(rs),
            "killed": sum(r.status == "killed" for r in rs),
            "survived": sum(r.status == "survived" for r in rs),
            "timeout": sum(r.status == "timeout" for r in rs),
            "error": sum(r.status == "error" for r in rs),
            "kill_rate": round(detected / len(counted), 4) if counted else None,
        }

    real = [r for r in results if r.category != "sanity"]
    out: Dict[str, object] = {"all": rate(real)}
    out["by_category"] = {c: rate([r for r in results if r.category == c]) for c in CATEGORIES}
    out["by_category"] = {c: v for c, v in out["by_category"].items() if v["mutants"]}
    out["survivors"] = [r.id for r in results if r.status == "survived"]
    return out


def print_table(results: Sequence[Result], summary: Dict[str, object]) -> None:
    rows = [("mutant", "category", "result", "seconds", "killing test")]
    rows += [(r.id, r.category, r.status, f"{r.seconds:.1f}", r.killer) for r in results]
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
    s = summary["all"]
    rate = "n/a" if s["kill_rate"] is None else f"{100 * s['kill_rate']:.1f}%"
    print(
        f"\n{s['mutants']} mutants (sanity mutants not counted): {s['killed']} killed, "
        f"{s['timeout']} timed out, {s['survived']} survived, {s['error']} errors; "
        f"kill rate {rate}"
    )
    for cat, c in summary["by_category"].items():
        print(f"  {cat:9s} {c['killed'] + c['timeout']}/{c['mutants'] - c['error']} killed")
    if summary["survivors"]:
        print("survivors: " + ", ".join(summary["survivors"]))


# ---------------------------------------------------------------------------- pytest plugin
def pytest_collection_modifyitems(session, config, items) -> None:
    """Loaded with ``-p mutation_test``: the test files of ``$MUTATION_TEST_FIRST`` run first
    (stable order otherwise), so the whole tier still runs but a likely killer stops it early."""
    first = [f for f in os.environ.get(FIRST_ENV, "").split(os.pathsep) if f]
    if first:
        rank = {f: k for k, f in enumerate(first)}
        items.sort(key=lambda it: rank.get(it.nodeid.split("::", 1)[0], len(rank)))


# ---------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Plant each catalogued bug in a copy of the repository and check that the "
        "fast test tier (pytest -m 'not slow') fails. See docs/testing.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--catalogue", type=Path, default=DEFAULT_CATALOGUE, help="YAML catalogue")
    p.add_argument("--only", nargs="+", default=[], metavar="ID", help="run these mutants only")
    p.add_argument("--category", help="run one category (sanity, formula, wiring, wiring-N)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once (one copy each)")
    p.add_argument("--list", action="store_true", help="print the catalogue and exit")
    p.add_argument("--check", action="store_true", help="check the snippets and exit")
    p.add_argument("--timeout", type=float, help="seconds per mutant (default: 5 x baseline)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    p.add_argument("--hinted-only", action="store_true", help="run only each mutant's tests")
    p.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="JSON report path")
    p.add_argument("--keep", action="store_true", help="keep the temporary copies")
    p.add_argument("--pytest-args", default="", help="extra pytest arguments (one string)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    return args


def _run_all(mutants, copies, timeout, args) -> List[Result]:
    todo: queue.Queue[Mutant] = queue.Queue()
    for m in mutants:
        todo.put(m)
    results: Dict[str, Result] = {}
    lock, start = threading.Lock(), time.monotonic()

    def worker(copy: Path) -> None:
        while True:
            try:
                m = todo.get_nowait()
            except queue.Empty:
                return
            r = run_mutant(m, copy, timeout, args.hinted_only, args.pytest_args.split())
            with lock:
                results[m.id] = r
                eta = (time.monotonic() - start) / len(results) * (len(mutants) - len(results))
                print(
                    f"[{len(results)}/{len(mutants)}] {m.id}: {r.status} {r.killer} "
                    f"({r.seconds:.1f} s; about {eta / 60:.0f} min left)",
                    flush=True,
                )

    threads = [threading.Thread(target=worker, args=(c,)) for c in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[m.id] for m in mutants]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        mutants = select(load_catalogue(args.catalogue), args.only, args.category)
        check_catalogue(mutants)
    except CatalogueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list or args.check:
        for m in mutants if args.list else ():
            print(f"{m.id:48s} {m.category:9s} {m.file}\n    {m.description}")
        print(f"{len(mutants)} mutants; every snippet matches exactly once")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="fastreid-ext-mutation-"))
    copies = [tmp / f"copy{k}" for k in range(min(args.jobs, max(len(mutants), 1)))]
    extra = args.pytest_args.split()
    try:
        for c in copies:
            make_copy(c)
        check_imports(copies[0])
        baseline: Dict[str, object] = {}
        if not args.no_baseline:
            first = sorted({t for m in mutants for t in m.tests}) if args.hinted_only else []
            junit = tmp / "baseline-junit.xml"
            print(f"unmutated fast tier in {copies[0]} ...", flush=True)
            rc, out, secs = run_tests(
                copies[0], build_pytest_command(junit, first, extra), (), 3600
            )
            baseline = {"exit_status": rc, "seconds": round(secs, 1)}
            if rc != 0:
                killer, message = first_failure(junit, out)
                print(f"error: the unmutated tier fails ({killer}: {message})\n{out[-2000:]}")
                return 2
            print(f"passes in {secs:.0f} s", flush=True)
        timeout = args.timeout or max(300.0, 5 * float(baseline.get("seconds", 180)))
        results = _run_all(mutants, copies, timeout, args)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = summarise(results)
    print_table(results, summary)
    from fastreid_ext.utils.atomic_io import atomic_json_dump

    args.report.parent.mkdir(parents=True, exist_ok=True)
    report = {"argv": sys.argv[1:] if argv is None else list(argv), "timeout_s": timeout}
    report.update(baseline=baseline, pytest=" ".join(build_pytest_command(Path("JUNIT"))[1:]))
    report.update(summary=summary, results=[asdict(r) for r in results])
    atomic_json_dump(report, str(args.report), indent=1)
    print(f"report: {args.report}")
    sane = [r for r in results if r.category == "sanity" and r.status == "survived"]
    if sane:
        print("error: sanity mutant(s) survived: the tests do not import the copy", file=sys.stderr)
        return 3
    return 1 if summary["survivors"] or summary["all"]["timeout"] else 0


if __name__ == "__main__":
    sys.exit(main())
