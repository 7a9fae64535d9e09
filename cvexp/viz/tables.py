"""Markdown tables for the reports that cvexp-compare and cvexp-bench print and write."""

from __future__ import annotations


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline); `|` in a cell is escaped."""

    def line(cells: list[str]) -> str:
        escaped = (str(c).replace("|", "\\|").replace("\n", " ") for c in cells)
        return "| " + " | ".join(escaped) + " |"

    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row}")
    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])
