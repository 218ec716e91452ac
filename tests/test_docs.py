"""The README stays short and the documentation's links and nav point at files that exist.

`make docs` (mkdocs --strict) checks the same and more, but needs the docs extra; these checks
need nothing beyond the standard library, so `make test` catches a broken link early.
"""
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LINK = re.compile(r"\]\(([^)\s#]*)(?:#[^)\s]*)?\)")


def _read(path):
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return f.read()


def _markdown_files():
  yield "README.md"
  yield "CHANGELOG.md"
  for folder, _, names in os.walk(os.path.join(ROOT, "docs")):
    for name in sorted(names):
      if name.endswith(".md"):
        yield os.path.relpath(os.path.join(folder, name), ROOT)


def _without_code(text):
  return re.sub(r"```.*?```", "", text, flags=re.S)


def test_readme_is_short_and_names_the_two_commands():
  text = _read("README.md")
  assert len(text.splitlines()) <= 200
  assert "make demo" in text and "make test" in text


@pytest.mark.parametrize("path", list(_markdown_files()))
def test_relative_links_point_at_files_that_exist(path):
  missing = []
  for target in _LINK.findall(_without_code(_read(path))):
    if not target or ":" in target.split("/")[0] or target.startswith("/"):
      continue   # an anchor on the same page, or an absolute URL
    if not os.path.exists(os.path.normpath(os.path.join(ROOT, os.path.dirname(path), target))):
      missing.append(target)
  assert not missing, f"{path} links to missing files: {missing}"


def test_included_files_exist():
  for path in _markdown_files():
    for target in re.findall(r'^--8<-- "([^"]+)"\s*$', _read(path), flags=re.M):
      assert os.path.isfile(os.path.join(ROOT, target)), f"{path} includes {target}, which does not exist"


def test_every_nav_entry_exists_and_every_page_is_in_the_nav():
  text = _read("mkdocs.yml")
  nav = re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?(\S+\.md)\s*$", text[text.index("\nnav:"):], flags=re.M)
  pages = {os.path.relpath(p, "docs") for p in _markdown_files() if p.startswith("docs" + os.sep)}
  assert sorted(set(nav)) == sorted(nav), "a page is in the nav twice"
  assert set(nav) == pages, f"in the nav, not in docs/: {set(nav) - pages}; in docs/, not in the nav: {pages - set(nav)}"


def test_griffe_extension_reads_fm_docstrings():
  pytest.importorskip("griffe")   # the docs extra (`make docs`)
  sys.path.insert(0, os.path.join(ROOT, "docs"))
  try:
    import griffe_fm  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  doc = ("Solve.\n\nArgs:\n  v: the field,\n  continued here.\n  t0, t1: the times.\n\nReturns:\n"
         "  `x`: the state.\n")
  assert griffe_fm.reindent(doc) == ("Solve.\n\nArgs:\n  v: the field,\n      continued here.\n"
                                     "  t0: the times.\n  t1: the times.\n\nReturns:\n  `x`: the state.\n")
  table = "Head.\n\n====  =====\nname  value\n====  =====\na     1 | 2\nb     3\n====  =====\n\nTail."
  assert griffe_fm.rst_tables(table) == ("Head.\n\n\n| name | value |\n|---|---|\n| a | 1 \\| 2 |\n| b | 3 |\n"
                                         "\n\nTail.")
