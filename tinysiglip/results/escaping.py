"""Text from the study database is data, never markup: one place that makes it safe for each output.

Names and descriptions come from study files (and from any program that wrote the database); a table
cell must not become a live YAML line, Markdown link, HTML tag or LaTeX command. Every writer passes
such text through one of these functions.
"""

from __future__ import annotations

import html
import re
import unicodedata

__all__ = ["html_text", "markdown_text", "one_line"]

# Unicode categories that break a line or hide text: controls, format characters, line/paragraph
# separators (YAML and Markdown also break lines at U+0085, U+2028 and U+2029).
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}
_MARKDOWN_SPECIAL = "\\`|"
# A link, image or reference definition needs "](", "][" or "]:"; a bracket before anything else stays
# as typed, so intervals such as "[-1.2, +3.4]" read as they are.
_LINK_AFTER_BRACKET = "([:"


def one_line(text: object, *, visible: bool = True) -> str:
    """``text`` on one line: line breaks and other control characters become visible escapes
    (``\\n``, ``\\u2028``; tab stays a tab as a space) or, with ``visible=False``, spaces."""
    out = []
    for ch in str(text):
        if ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            if not visible:
                out.append(" ")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\r":
                out.append("\\r")
            else:
                out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def markdown_text(text: object) -> str:
    """Text for a Markdown table cell or paragraph: one line, no tag or entity (``<`` ``>`` ``&x`` escaped),
    no link, image or reference definition (a ``]`` before ``(``, ``[`` or ``:`` escaped), no code span,
    no cell break (``|``)."""
    s = one_line(text, visible=False)
    out = []
    for i, ch in enumerate(s):
        if ch == "&" and re.match(r"[A-Za-z#]", s[i + 1 : i + 2]):  # only where it would start an entity
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch == "]" and s[i + 1 : i + 2] and s[i + 1] in _LINK_AFTER_BRACKET:
            out.append("\\]")
        elif ch in _MARKDOWN_SPECIAL:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def html_text(text: object) -> str:
    """Text for HTML and for Plotly labels (which read a subset of HTML: ``<a href>``, ``<b>``, ...):
    one line, every tag shown as text."""
    return html.escape(one_line(text, visible=False), quote=True)
