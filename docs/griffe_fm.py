"""Griffe extension: read fm's Google-style docstrings as fm writes them.

fm's docstrings do not indent the continuation lines of an `Args:` item, and they document
related parameters together (`x0, x1: source and target batches`). Before griffe parses a
docstring, this indents each continuation line under its item and splits a shared item into
one item per name, so every parameter renders with its whole description. Simple reST tables
(rows between `=====  =====` rules, as in `fm.paths`) become Markdown tables. The text itself is
not changed.
"""
from __future__ import annotations

import re

import griffe

_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Attributes|Raises|Keyword Args|Other Parameters):\s*$")
# An item: one name or several comma-separated names (optionally `*args`/`**kwargs`), an optional
# "(type)", then a colon.
_ITEM = re.compile(r"^(\*{0,2}[A-Za-z_]\w*(?:, \*{0,2}[A-Za-z_]\w*)*)(\s*\([^)]*\))?:(\s|$)")


def reindent(text: str) -> str:
  """Returns `text` with continuation lines of section items indented and shared items split."""
  lines = text.split("\n")
  out: list[str] = []
  section_indent = item_indent = None
  i = 0
  while i < len(lines):
    line = lines[i]
    stripped = line.lstrip()
    indent = len(line) - len(stripped)
    header = _SECTION.match(line)
    if header:
      section_indent, item_indent = len(header.group(1)), None
      out.append(line)
      i += 1
      continue
    if section_indent is not None:
      if not stripped:
        section_indent = item_indent = None   # a blank line ends the section
      elif indent <= section_indent:
        section_indent = item_indent = None
      elif item_indent is None or indent == item_indent:
        item = _ITEM.match(stripped)
        if item_indent is None:
          item_indent = indent
        if item:
          names = [n.strip() for n in item.group(1).split(",")]
          # the item and its continuation lines, indented one level deeper than the item
          body = [stripped[item.end(1):]]
          j = i + 1
          while (j < len(lines) and lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) >= indent
                 and not (len(lines[j]) - len(lines[j].lstrip()) == indent and _ITEM.match(lines[j].lstrip()))):
            cont = lines[j].lstrip()
            extra = len(lines[j]) - len(cont) - indent
            body.append(" " * (indent + 4 + extra) + cont)
            j += 1
          for name in names:
            out.append(" " * indent + name + body[0])
            out.extend(body[1:])
          i = j
          continue
    out.append(line)
    i += 1
  return "\n".join(out)


_RULE = re.compile(r"^(\s*)=+(\s+=+)+\s*$")


def rst_tables(text: str) -> str:
  """Returns `text` with each simple reST table (three `=` rules: top, under the header, bottom) as Markdown."""
  lines = text.split("\n")
  out: list[str] = []
  i = 0
  while i < len(lines):
    rules = [j for j in range(i, len(lines)) if _RULE.match(lines[j])][:3] if _RULE.match(lines[i]) else []
    if len(rules) == 3 and rules[1] == i + 2 and lines[i] == lines[rules[1]] == lines[rules[2]]:
      rule = lines[i]
      spans = [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]
      spans = [(a, spans[k + 1][0] if k + 1 < len(spans) else None) for k, (a, _) in enumerate(spans)]

      def row(line):
        cells = [line[a:b].strip().replace("|", "\\|") for a, b in spans]
        return "| " + " | ".join(cells) + " |"

      indent = _RULE.match(rule).group(1)
      out += ["", indent + row(lines[i + 1]), indent + "|" + "---|" * len(spans)]
      out += [indent + row(line) for line in lines[rules[1] + 1:rules[2]] if line.strip()]
      out.append("")
      i = rules[2] + 1
      continue
    out.append(lines[i])
    i += 1
  return "\n".join(out)


class FmDocstrings(griffe.Extension):
  """Applies `reindent` to every docstring griffe reads."""

  def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
    if obj.docstring is not None:
      obj.docstring.value = rst_tables(reindent(obj.docstring.value))
