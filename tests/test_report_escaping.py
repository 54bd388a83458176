"""Text is data (issue 11 §6): hostile names and descriptions in the study database never become live
YAML in best_configs, nor tags, links or commands in the Markdown and LaTeX outputs. (Descriptions do
not reach the dashboards; their titles are HTML-escaped and Plotly's JSON escapes ``<``.)"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy
import yaml
from test_report import STUDY_NAME, shared_study_db

from tinysiglip.results.escaping import html_text, markdown_text, one_line

HOSTILE = (
    "full\ndata: {train_cache: /etc/passwd}\r\nx\u2028y\x85z <script>alert(1)</script> "
    "<img src=x onerror=alert(2)> [click](javascript:alert(3)) `code` | pipe \\input{/etc/passwd} % end"
)


def test_escaping_functions():
    assert one_line("a\nb\u2028c\x00") == "a\\nb\\u2028c\\u0000"
    assert one_line("a\nb", visible=False) == "a b"
    md = markdown_text(HOSTILE)
    assert (
        "\n" not in md
        and "<" not in md
        and not re.search(r"(?<!\\)\]\(", md)
        and "\\|" in md
        and "[click\\](" in md
        and "](" not in md.replace("\\](", "")
    )
    assert html_text('<a href="javascript:x">') == "&lt;a href=&quot;javascript:x&quot;&gt;"


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory):
    url, _ = shared_study_db(tmp_path_factory)
    copy = tmp_path_factory.mktemp("hostile") / "study.db"
    shutil.copy(Path(url.removeprefix("sqlite:///")), copy)
    engine = sqlalchemy.create_engine(f"sqlite:///{copy}")
    with engine.begin() as c:
        settings = json.loads(c.execute(sqlalchemy.text("SELECT settings FROM tsl_studies")).scalar_one())
        settings["cells"]["A5"]["description"] = HOSTILE
        c.execute(sqlalchemy.text("UPDATE tsl_studies SET settings = :s"), {"s": json.dumps(settings)})
    engine.dispose()
    return f"sqlite:///{copy}"


def test_report_and_best_configs_keep_hostile_text_as_text(hostile_db, tmp_path):
    from tinysiglip.results.report import main

    out = tmp_path / "rep"
    assert main(["--storage", hostile_db, "--study", STUDY_NAME, "--out", str(out)]) == 0
    text = (out / "best_configs" / "A5.yaml").read_text()
    config = yaml.safe_load(text)
    assert "/etc/passwd" not in json.dumps(config)  # the description stayed in its comment
    assert all(ln.startswith("# ") for ln in text.splitlines()[: text.count("# ")] if ln.startswith("#"))
    assert "full\\ndata: {train_cache: /etc/passwd}" in text
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert yaml.safe_load("\n".join(body)) == config
    md = "\n".join(p.read_text() for p in out.glob("*.md"))
    assert "alert(1)" in md  # shown ...
    for live in ("<script", "<img", "\u2028", "\x85"):
        assert live not in md, live  # ... never live
    assert not re.search(r"(?<!\\)\]\(javascript", md)  # no link
    assert "&lt;script&gt;" in md and "[click\\](" in md and "](" not in md.replace("\\](", "")
    tex = "\n".join(p.read_text() for p in out.glob("*.tex"))
    assert "\\input{" not in tex and "\\textbackslash{}input\\{/etc/passwd\\}" in tex
    assert not re.search(r"[^\\]% end", tex)  # % escaped: the rest of the cell is not a comment
