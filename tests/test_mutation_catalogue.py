"""The mutation-testing tool (scripts/mutation_test.py) and its catalogue of planted bugs.

The catalogue must match the current tree exactly (a snippet that no longer occurs exactly once
fails here, naming the mutant), cover every area and every bug category of the practice, and each
mutant must change exactly one place of one file. The tool's parts that decide a verdict
(classification, summary, test ordering, the copied file list) are checked on small inputs.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path

import pytest

from .conftest import REPO

_spec = importlib.util.spec_from_file_location("mutation_test", REPO / "scripts/mutation_test.py")
mt = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("mutation_test", mt)
_spec.loader.exec_module(mt)

MUTANTS = mt.load_catalogue()
BY_ID = {m.id: m for m in MUTANTS}

# The bugs named in issue #12, by catalogue id: every one must stay planted.
ISSUE_BUGS = {
    "cpcl-image-id-from-file-name-prefix": "wiring-1",
    "cpcl-hook-units-from-file-name-prefix": "wiring-1",
    "cpcl-pmm-momentum-flipped": "wiring-2",
    "cpcl-dbscan-min-samples-off-by-one": "wiring-2",
    "cpcl-icpm-uses-pcm-tau": "wiring-2",
    "propot-text-p2i-fed-visual-prototypes": "wiring-3",
    "csdn-phase3-trainable-set-without-proj-head": "wiring-4",
    "propot-inter-switch-reads-intra": "wiring-4",
    "propot-ablation-row-3-inter-on": "wiring-4",
    "trainer-set-epoch-removed": "wiring-5",
    "trainer-seed-without-epoch": "wiring-5",
    "t2i-ap-precision-off-by-one": "formula",
    "t2i-minp-first-positive": "formula",
    "jaccard-expansion-overlap-threshold": "formula",
    "memory-momentum-swapped": "formula",
    "sdm-temperature-multiplied": "formula",
    "checkpoint-optimizer-state-dropped": "wiring-5",
}
# The core modules the practice covers: at least one mutant in each.
AREAS = [
    "fastreid_ext/evaluation/retrieval_metrics.py",
    "fastreid_ext/evaluation/vi_metrics.py",
    "fastreid_ext/clustering/knn.py",
    "fastreid_ext/clustering/jaccard.py",
    "fastreid_ext/clustering/dbscan.py",
    "fastreid_ext/clustering/oplm.py",
    "fastreid_ext/modeling/memory.py",
    "fastreid_ext/modeling/losses/sdm.py",
    "fastreid_ext/modeling/losses/identity.py",
    "fastreid_ext/modeling/losses/mlm.py",
    "fastreid_ext/modeling/meta_arch/clip_t2i_baseline.py",
    "fastreid_ext/engine/trainer.py",
    "fastreid_ext/engine/hooks.py",
    "fastreid_ext/engine/checkpoint.py",
    "fastreid_ext/data/samplers.py",
    "projects/Propot/propot/modeling/losses.py",
    "projects/Propot/propot/modeling/meta_arch.py",
    "projects/CPCL/cpcl/modeling/losses.py",
    "projects/CPCL/cpcl/modeling/meta_arch.py",
    "projects/CSDN/csdn/modeling/losses.py",
    "projects/CSDN/csdn/modeling/meta_arch.py",
]


def test_catalogue_parses_with_unique_ids_and_known_categories():
    assert len(MUTANTS) >= 40
    assert len(BY_ID) == len(MUTANTS)
    assert {m.category for m in MUTANTS} >= {"sanity", "formula"} | {
        f"wiring-{k}" for k in range(1, 7)
    }
    for m in MUTANTS:
        assert m.category in mt.CATEGORIES and m.description.strip(), m.id
        assert all(t.startswith("tests/test_") and t.endswith(".py") for t in m.tests), m.id


def test_every_snippet_matches_exactly_once_in_the_current_tree():
    mt.check_catalogue(MUTANTS, REPO)  # raises, naming every stale mutant


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_applying_a_mutant_changes_exactly_one_place(mutant):
    original = (REPO / mutant.file).read_text()
    mutated = mt.mutate_text(original, mutant)
    assert mutated != original
    a, b = original.splitlines(), mutated.splitlines()
    changes = [op for op in difflib.SequenceMatcher(a=a, b=b).get_opcodes() if op[0] != "equal"]
    assert len(changes) == 1, changes
    # the changed lines are those of the snippet, and nothing outside them moved
    start = original.index(mutant.old)
    assert original[:start] == mutated[:start]
    assert original[start + len(mutant.old) :] == mutated[start + len(mutant.new) :]
    if mutant.file.endswith(".py"):
        compile(mutated, mutant.file, "exec")  # a planted bug, not a syntax error


def test_issue_bugs_and_core_areas_are_covered():
    for mutant_id, category in ISSUE_BUGS.items():
        assert mutant_id in BY_ID, mutant_id
        assert BY_ID[mutant_id].category == category, mutant_id
    files = {m.file for m in MUTANTS}
    assert [a for a in AREAS if a not in files] == []
    # each package the tests import from the copy has a sanity mutant or is checked by import
    assert set(mt.PACKAGES) == {"fastreid_ext", "propot", "cpcl", "csdn"}
    assert [m.id for m in MUTANTS if m.category == "sanity"]


def test_a_stale_snippet_fails_loudly_naming_the_mutant(tmp_path):
    (tmp_path / "mod.py").write_text("x = 1\nx = 1\ny = 2\n")
    twice = mt.Mutant("twice", "formula", "mod.py", "x = 1", "x = 2", "d")
    gone = mt.Mutant("gone", "formula", "mod.py", "z = 3", "z = 4", "d")
    missing = mt.Mutant("no-file", "formula", "nope.py", "a", "b", "d")
    ok = mt.Mutant("ok", "formula", "mod.py", "y = 2", "y = 3", "d", ("tests/test_none.py",))
    with pytest.raises(mt.CatalogueError) as err:
        mt.check_catalogue([twice, gone, missing, ok], tmp_path)
    text = str(err.value)
    assert "'twice'" in text and "occurs 2 times" in text
    assert "'gone'" in text and "occurs 0 times" in text
    assert "'no-file'" in text and "nope.py does not exist" in text
    assert "'ok': test file tests/test_none.py does not exist" in text
    assert mt.mutate_text("a\ny = 2\n", ok) == "a\ny = 3\n"


def test_malformed_catalogue_entries_are_rejected(tmp_path):
    good = "- {id: a, category: formula, file: f.py, old: x, new: y, description: d}\n"
    cases = {
        "bad-category": good.replace("formula", "wiring-9"),
        "same": good.replace("new: y", "new: x"),
        "field": good.replace("description: d", "description: d, tset: [t]"),
        "dup": good + good,
        "empty": good.replace("old: x", "old: ''"),
    }
    for name, body in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text("mutants:\n" + body)
        with pytest.raises(mt.CatalogueError):
            mt.load_catalogue(path)
    path = tmp_path / "good.yaml"
    path.write_text("mutants:\n" + good)
    assert mt.load_catalogue(path) == [mt.Mutant("a", "formula", "f.py", "x", "y", "d")]


def test_selection_by_id_and_category():
    wiring = mt.select(MUTANTS, [], "wiring")
    assert wiring and all(m.category.startswith("wiring-") for m in wiring)
    assert [m.id for m in mt.select(MUTANTS, ["sdm-q-not-normalised"], None)] == [
        "sdm-q-not-normalised"
    ]
    assert mt.select(MUTANTS, ["sdm-q-not-normalised"], "wiring") == []
    with pytest.raises(mt.CatalogueError, match="no-such-mutant"):
        mt.select(MUTANTS, ["no-such-mutant"], None)


def test_summary_counts_and_kill_rate():
    r = mt.Result
    results = [
        r("s", "sanity", "f", "killed", "t", 1.0),
        r("a", "formula", "f", "killed", "t", 1.0),
        r("b", "formula", "f", "survived", "", 1.0),
        r("c", "wiring-2", "f", "timeout", "", 1.0),
        r("d", "wiring-2", "f", "error", "", 1.0),
    ]
    s = mt.summarise(results)
    # sanity mutants are not counted; errors leave the denominator; timeouts count as killed
    assert s["all"] == {
        "mutants": 4,
        "killed": 1,
        "survived": 1,
        "timeout": 1,
        "error": 1,
        "kill_rate": round(2 / 3, 4),
    }
    assert s["by_category"]["formula"]["kill_rate"] == 0.5
    assert s["by_category"]["wiring-2"]["kill_rate"] == 1.0
    assert s["survivors"] == ["b"]


def test_hinted_tests_run_first_and_the_rest_keeps_its_order(monkeypatch):
    class Item:
        def __init__(self, nodeid):
            self.nodeid = nodeid

    items = [Item(n) for n in ("tests/a.py::x", "tests/b.py::y", "tests/c.py::z", "tests/b.py::w")]
    monkeypatch.setenv(mt.FIRST_ENV, "tests/c.py" + mt.os.pathsep + "tests/b.py")
    mt.pytest_collection_modifyitems(None, None, items)
    assert [i.nodeid for i in items] == [
        "tests/c.py::z",
        "tests/b.py::y",
        "tests/b.py::w",
        "tests/a.py::x",
    ]


def test_failure_parsing_from_junit_and_output(tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text(
        '<testsuites><testsuite><testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_b" name="test_bad"><failure message="assert 1 == 2'
        '&#10;more">tb</failure></testcase></testsuite></testsuites>'
    )
    out = "...F\nFAILED tests/test_b.py::test_bad[x-1] - assert 1 == 2\n1 failed\n"
    assert mt.first_failure(junit, out) == ("tests/test_b.py::test_bad[x-1]", "assert 1 == 2")
    out = "x\nE   ImportError: boom\nERROR tests/test_c.py\n"
    assert mt.first_failure(tmp_path / "none.xml", out) == ("tests/test_c.py", "")
    out = "ImportError while loading conftest\nE   ImportError: mutation sanity\n"
    assert mt.first_failure(tmp_path / "none.xml", out) == ("", "ImportError: mutation sanity")


def _fake_runs(monkeypatch, copy: Path, outcomes, broken=()):
    """Replace the pytest runs: ``outcomes`` are (exit status, output) of the successive runs;
    the tests in ``broken`` also fail without the mutant. Returns the commands and the planted
    file contents seen by each run."""
    seen = []

    def run_tests(where, cmd, first, timeout):
        seen.append((cmd, (where / "mod.py").read_text()))
        rc, out = outcomes[len(seen) - 1]
        return rc, out, 1.0

    monkeypatch.setattr(mt, "run_tests", run_tests)
    monkeypatch.setattr(mt, "fails_unmutated", lambda where, node, timeout: node in broken)
    return seen


def test_a_kill_by_a_test_failing_without_the_mutant_is_not_counted(tmp_path, monkeypatch):
    (tmp_path / "mod.py").write_text("x = 1\n")
    m = mt.Mutant("m", "formula", "mod.py", "x = 1", "x = 2", "d")
    env_failure = "FAILED tests/test_env.py::test_meta - entry points changed\n"
    seen = _fake_runs(
        monkeypatch, tmp_path, [(1, env_failure), (0, "")], {"tests/test_env.py::test_meta"}
    )
    r = mt.run_mutant(m, tmp_path, 60, False, [])
    assert r.status == "survived" and "tests/test_env.py::test_meta" in r.detail
    assert [content for _, content in seen] == ["x = 2\n", "x = 2\n"]  # planted in both runs
    assert "--deselect" not in seen[0][0]
    assert seen[1][0][seen[1][0].index("--deselect") + 1] == "tests/test_env.py::test_meta"
    assert (tmp_path / "mod.py").read_text() == "x = 1\n"  # restored
    assert r.seconds == 2.0


def test_a_kill_confirmed_without_the_mutant_is_counted(tmp_path, monkeypatch):
    (tmp_path / "mod.py").write_text("x = 1\n")
    m = mt.Mutant("m", "formula", "mod.py", "x = 1", "x = 2", "d")
    out = "FAILED tests/test_x.py::test_value - assert 2 == 1\n"
    seen = _fake_runs(monkeypatch, tmp_path, [(1, out)])
    r = mt.run_mutant(m, tmp_path, 60, False, [])
    assert (r.status, r.killer, len(seen)) == ("killed", "tests/test_x.py::test_value", 1)
    assert (tmp_path / "mod.py").read_text() == "x = 1\n"
    _fake_runs(monkeypatch, tmp_path, [(None, "")])
    assert mt.run_mutant(m, tmp_path, 60, False, []).status == "timeout"
    _fake_runs(monkeypatch, tmp_path, [(5, "")])
    assert mt.run_mutant(m, tmp_path, 60, False, []).status == "error"


def test_the_copy_holds_the_tracked_files_and_puts_itself_first(tmp_path):
    files = mt.repository_files(REPO)
    for rel in ("scripts/mutation_test.py", "tests/mutants/catalogue.yaml", "tests/conftest.py"):
        assert rel in files
    assert not [f for f in files if f.startswith((".venv/", ".git/")) or "__pycache__" in f]
    env = mt.copy_env(tmp_path, ["tests/test_x.py"])
    paths = env["PYTHONPATH"].split(mt.os.pathsep)
    assert paths[:4] == [str(tmp_path)] + [str(tmp_path / d) for d in mt.PROJECT_DIRS]
    assert env[mt.FIRST_ENV] == "tests/test_x.py"
    cmd = mt.build_pytest_command(Path("j.xml"), ["tests/test_x.py"])
    assert cmd[cmd.index("not slow") - 1] == "-m" and "-x" in cmd
    assert cmd[cmd.index("--ignore") + 1] == "tests/test_mutation_catalogue.py"
    assert cmd[-1] == "tests/test_x.py"
