"""Fixtures for the report tests: headless Chromium (skipped when it is not installed)."""

from reporting.browser import chromium  # noqa: F401 - the fixture
