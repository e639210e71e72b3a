"""The test tree itself: every folder of tests is a package, so two test files may share a basename
(pytest's default import mode imports a non-package test file as a top-level module by its basename,
and a second `test_loading.py` then fails collection in a clean clone)."""

from pathlib import Path

TESTS = Path(__file__).parent


def test_every_folder_of_tests_is_a_package():
    folders = {p.parent for p in TESTS.rglob("test_*.py")} - {TESTS}
    assert sorted(str(f.relative_to(TESTS)) for f in folders if not (f / "__init__.py").exists()) == []
