"""One report table and its three renderings (Markdown, CSV, LaTeX); :mod:`.tables` decides what the
tables hold. Text from the database goes through :mod:`.escaping` in every rendering."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinysiglip.results.bootstrap import Interval
from tinysiglip.results.escaping import markdown_text, one_line
from tinysiglip.results.report_data import Stat

__all__ = ["DAGGER", "Table"]

DAGGER = "†"


@dataclass
class Table:
    key: str  # file stem
    title: str
    columns: list[tuple[str, str]]  # (key, header) shown in Markdown / LaTeX / CSV
    rows: list[dict[str, Any]]  # values: Stat, str, int, float, None
    notes: list[str] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)
    csv_extra: list[str] = field(default_factory=list)  # keys only in the CSV

    # ---------------------------------------------------------------- rendering
    @staticmethod
    def _text(v: Any) -> str:
        if isinstance(v, (Stat, Interval)):
            return v.fmt()
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    def ids_line(self) -> str:
        ids = sorted(set(self.run_ids))
        return "Computed from tsl_runs.id: " + (", ".join(map(str, ids)) if ids else "none")

    def markdown(self) -> str:
        heads = [markdown_text(h) for _, h in self.columns]
        lines = [f"### {markdown_text(self.title)}", "", "| " + " | ".join(heads) + " |"]
        lines.append("| " + " | ".join([":---"] + ["---:"] * (len(heads) - 1)) + " |")
        for row in self.rows:
            cells = [markdown_text(self._text(row.get(k))) for k, _ in self.columns]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.extend(f"{markdown_text(n)}  " for n in self.notes)
        lines.append(self.ids_line())
        return "\n".join(lines) + "\n"

    def csv_rows(self) -> tuple[list[str], list[list[Any]]]:
        """Stat columns become ``_mean, _std, _n``; interval columns ``k, k_low, k_high``."""
        keys = [k for k, _ in self.columns] + [k for k in self.csv_extra if k not in dict(self.columns)]
        header: list[str] = []
        for k in keys:
            if any(isinstance(r.get(k), Stat) for r in self.rows):
                header += [f"{k}_mean", f"{k}_std", f"{k}_n"]
            elif any(isinstance(r.get(k), Interval) for r in self.rows):
                header += [k, f"{k}_low", f"{k}_high"]
            else:
                header.append(k)
        out = []
        for r in self.rows:
            line: list[Any] = []
            for k in keys:
                v = r.get(k)
                if any(isinstance(x.get(k), Stat) for x in self.rows):
                    line += [v.mean, v.std, v.n] if isinstance(v, Stat) else [None, None, None]
                elif any(isinstance(x.get(k), Interval) for x in self.rows):
                    line += _interval_csv(v)
                elif isinstance(v, (list, tuple)):
                    line.append(" ".join(map(str, v)))
                else:
                    line.append(v)
            out.append(line)
        return header, out

    def write_csv(self, path: Path) -> None:
        header, rows = self.csv_rows()
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for r in rows:
                w.writerow(["" if v is None else v for v in r])

    def latex(self) -> str:
        def esc(s: str) -> str:
            s = one_line(s, visible=False).replace("\\", "\x00")
            for a, b in (
                ("&", r"\&"),
                ("%", r"\%"),
                ("_", r"\_"),
                ("#", r"\#"),
                ("$", r"\$"),
                ("{", r"\{"),
                ("}", r"\}"),
            ):
                s = s.replace(a, b)
            for a, b in _LATEX_SYMBOLS:
                s = s.replace(a, b)
            return s.replace("\x00", r"\textbackslash{}")

        spec = "l" + "r" * (len(self.columns) - 1)
        lines = [
            f"% {one_line(self.title, visible=False)}",
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{esc(self.title)}}}",
            rf"\label{{tab:{self.key}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(esc(h) for _, h in self.columns) + r" \\",
            r"\midrule",
        ]
        for row in self.rows:
            lines.append(" & ".join(esc(self._text(row.get(k))) for k, _ in self.columns) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        for n in [*self.notes, self.ids_line()]:
            lines.append(rf"\par\smallskip{{\footnotesize {esc(n)}}}")
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"


_LATEX_SYMBOLS = (
    ("±", r"$\pm$"),
    (DAGGER, r"$^\dagger$"),
    ("—", "--"),
    ("−", "-"),
    ("Δ", r"$\Delta$"),
    ("×", r"$\times$"),
    ("²", r"$^2$"),
    ("λ", r"$\lambda$"),
    ("Σ", r"$\Sigma$"),
)


def _interval_csv(v: Any) -> list[Any]:
    if isinstance(v, Interval):
        return [v.estimate, v.low, v.high]
    if isinstance(v, Stat):  # a standard-error delta where no ranks were stored
        return [v.mean, None, None]
    return [None if v in (None, "-") else v, None, None]
