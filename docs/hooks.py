"""MkDocs hook: the pages may link to files outside docs/ (experiments/*.md, figures, CHANGELOG.md).

The links are written relative to the page's file in the repository, so they work when the
Markdown is read on disk or on a code host. For the site, every file outside docs/ that a page
links to (and, for Markdown files, whatever those link to in turn) is added to the build under
its repository path, and each such link is rewritten to point at that copy. Links to files that
do not exist are left alone, so `mkdocs build --strict` still reports them.
"""
from __future__ import annotations

import os
import posixpath
import re

from mkdocs.structure.files import File, InclusionLevel

_LINK = re.compile(r"(\]\()([^)\s#]*)(#[^)\s]*)?(\))")
_SITE_TO_REPO: dict[str, str] = {}   # site src_uri -> path relative to the repository root


def _repo_root(config) -> str:
  return os.path.dirname(os.path.abspath(config["config_file_path"]))


def _docs_prefix(config) -> str:
  return os.path.relpath(config["docs_dir"], _repo_root(config)).replace(os.sep, "/")


def _is_relative(target: str) -> bool:
  return bool(target) and not target.startswith("/") and ":" not in target.split("/")[0]


def _targets(text: str, repo_path: str):
  for match in _LINK.finditer(text):
    target = match.group(2)
    if _is_relative(target):
      yield posixpath.normpath(posixpath.join(posixpath.dirname(repo_path), target))


def on_files(files, config):
  root, docs = _repo_root(config), _docs_prefix(config)
  _SITE_TO_REPO.clear()
  pending = []
  for f in files.documentation_pages():
    _SITE_TO_REPO[f.src_uri] = f"{docs}/{f.src_uri}"
    pending.append(f"{docs}/{f.src_uri}")
  seen = set(pending)
  while pending:
    repo_path = pending.pop()
    with open(os.path.join(root, repo_path), encoding="utf-8") as fh:
      text = fh.read()
    for target in _targets(text, repo_path):
      if target in seen or target.startswith("..") or target.startswith(docs + "/"):
        continue
      seen.add(target)
      abs_path = os.path.join(root, target)
      if not os.path.isfile(abs_path):
        continue
      if files.get_file_from_path(target) is not None:
        raise ValueError(f"{target} outside {docs}/ collides with a page of the same path in {docs}/")
      files.append(File.generated(config, target, abs_src_path=abs_path,
                                  inclusion=InclusionLevel.NOT_IN_NAV))
      _SITE_TO_REPO[target] = target
      if target.endswith(".md"):
        pending.append(target)
  return files


def on_page_markdown(markdown, page, config, files):
  repo_path = _SITE_TO_REPO.get(page.file.src_uri)
  if repo_path is None:
    return markdown
  docs = _docs_prefix(config)
  here = posixpath.dirname(page.file.src_uri)

  def rewrite(match):
    target = match.group(2)
    if not _is_relative(target):
      return match.group(0)
    real = posixpath.normpath(posixpath.join(posixpath.dirname(repo_path), target))
    if real.startswith(docs + "/"):
      site = real[len(docs) + 1:]
    elif real in _SITE_TO_REPO:
      site = real
    else:
      return match.group(0)
    new = posixpath.relpath(site, here or ".")
    return f"{match.group(1)}{new}{match.group(3) or ''}{match.group(4)}"

  return _LINK.sub(rewrite, markdown)
