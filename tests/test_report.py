"""Reports from hand-written results.json files (no model): leaderboard cells, LaTeX and CSV checked
exactly against the numbers written, the HTML/Markdown pages, and clear errors for bad input.

`write_runs` (also used by test_report_browser.py) writes three runs whose every number is chosen so
the expected percentages need no rounding of a half: `baseline`, `robust_at` and the tokenizer run `tok`.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from vitrobust.cli import main
from vitrobust.errors import InputError, UserError
from vitrobust.report import build_report, failed_checks, leaderboard, load_runs, summary_rows, text_table
from vitrobust.report.tables import UNITS, format_interval, latex_escape
from vitrobust.stats import wilson

EPS8, EPS4 = 8 / 255, 4 / 255


def png(path: Path, size: tuple[int, int] = (60, 40), color=(200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste(color, (5, 5, size[0] - 5, size[1] - 5))
    img.save(path)
    return path.name


def corruption_entry(top1: dict[str, list[float]], mce: float, rel: float, mean: float, ce: dict,
                     relative_ce: dict) -> dict:
    """As evaluate/corruptions.py writes it: mce and relative_mce x100, CE per corruption a ratio."""
    return {"mean_top1": mean, "clean_top1": 0.8125, "mce": mce, "relative_mce": rel, "reference": "alexnet",
            "n": 32, "severities": [1, 2, 3, 4, 5], "source": "generate",
            "per_corruption": {c: {str(s + 1): a for s, a in enumerate(accs)} for c, accs in top1.items()},
            "ce": ce, "relative_ce": relative_ce, "notes": [], "figures": ["corruptions.png"]}


def write_runs(root: Path) -> list[Path]:
    base, robust, tok = root / "runs" / "baseline", root / "runs" / "robust_at", root / "runs" / "tok"
    results = {
        base: {
            "meta": {"model": "vit_tiny_patch16_224", "params": 5717416, "flops": 1258000000},
            "clean": {"top1": 0.8125, "n": 32},
            "pgd": {"norm": "Linf", "eps": EPS8, "steps": 10, "restarts": 1, "clean_top1": 0.8125,
                    "robust_top1": 0.0625, "n": 32, "gradient": "exact",
                    "checks": {"robust_le_clean": {"ok": True, "detail": "fine"}},
                    "figures": [png(base / "figures" / "pgd_examples.png", (90, 60))]},
            "autoattack": {"norm": "Linf", "eps": EPS8, "version": "standard",
                           "attacks": ["apgd-ce", "square"], "clean_top1": 0.8125, "robust_top1": 0.046875,
                           "n": 32, "gradient": "exact",
                           "checks": {"square": {"ok": False, "detail": "Square broke 3 of 32 images"}}},
            "eps_sweep": {"norm": "Linf", "attack": "pgd", "eps_list": [0.0, 2 / 255, EPS8],
                          "robust_top1": [0.8125, 0.5, 0.0625], "clean_top1": 0.8125, "n": 32,
                          "figures": ["eps_sweep.png"]},  # redrawn by the report: the file need not exist
            "corruptions": corruption_entry({"gaussian_noise": [0.7, 0.6, 0.5, 0.4, 0.3],
                                             "fog": [0.8, 0.6, 0.5, 0.4, 0.2]}, 75.0, 90.0, 0.5,
                                            {"gaussian_noise": 0.8, "fog": 0.7},
                                            {"gaussian_noise": 0.85, "fog": 0.95}),
            "imagenet_v2": {"top1": 0.7, "n": 100},
            "imagenet_r": {"top1": 0.25, "n": 100},
            "si_score": {"top1": 0.375, "n": 20, "factors": {"location": {"top1": 0.4, "n": 10},
                                                              "rotation": {"top1": 0.35, "n": 10}}},
            "relevance": {"foreground_share": 0.61, "pointing_game": 0.5, "iou": 0.33, "n": 16,
                          "method": "chefer",
                          "figures": [png(base / "figures" / "relevance_grid.png", (80, 50), (30, 30, 200))]},
            "background": {"only_fg": 0.4, "mixed_same": 0.7, "mixed_rand": 0.5, "bg_gap": 0.2,
                           "original": 0.8, "n": 16},
        },
        robust: {
            "meta": {"model": "vit_tiny_patch16_224", "params": 5717416},
            "clean": {"top1": 0.6875, "n": 32},
            "pgd": {"norm": "Linf", "eps": EPS8, "steps": 10, "restarts": 2, "clean_top1": 0.6875,
                    "robust_top1": 0.4375, "n": 32, "gradient": "straight-through"},
            "autoattack": {"norm": "Linf", "eps": EPS4, "version": "standard", "attacks": ["apgd-ce"],
                           "clean_top1": 0.6875, "robust_top1": 0.375, "n": 64, "gradient": "exact"},
            "corruptions": corruption_entry({"gaussian_noise": [0.7, 0.65, 0.55, 0.5, 0.35],
                                             "fog": [0.8, 0.7, 0.5, 0.45, 0.3]}, 60.0, 80.0, 0.55,
                                            {"gaussian_noise": 0.65, "fog": 0.55},
                                            {"gaussian_noise": 0.75, "fog": 0.85}),
            "imagenet_v2": {"top1": 0.6, "n": 100},
            "relevance": {"foreground_share": 0.72, "pointing_game": 0.625, "iou": 0.4, "n": 16,
                          "method": "rollout"},
            "background": {"only_fg": 0.45, "mixed_same": 0.6, "mixed_rand": 0.5, "bg_gap": 0.1,
                           "original": 0.7, "n": 16},
        },
        tok: {
            "tokenizer": {"psnr": 24.5678, "perplexity": 300.25, "used_codes": 400, "dead_codes": 112,
                          "n_embed": 512, "n": 64,
                          "figures": [png(tok / "figures" / "reconstructions.png", (120, 40),
                                          (30, 160, 30))]},
        },
    }
    for run, res in results.items():
        for entry in res.values():  # as this version writes them: each names its balanced sample
            if entry.get("n"):
                entry["sample"] = {"rule": "balanced", "seed": 0, "n": entry["n"]}
        run.mkdir(parents=True, exist_ok=True)
        (run / "results.json").write_text(json.dumps(res, indent=2))
    (base / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"kind": "train", "step": 1, "loss": 2.0}, {"kind": "train", "step": 2, "loss": 1.5},
        {"kind": "epoch", "epoch": 0, "seconds": 10.25}, {"kind": "epoch", "epoch": 1, "seconds": 20.0},
        {"kind": "eval", "epoch": 1, "test_top1": 0.8}]) + "\n")
    return [base, robust, tok]


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    return write_runs(tmp_path)


HEADER = ["run", "model", "params (M)", "FLOPs (G)", "train s", "clean top1 %", "PGD top1 % (Linf 8/255)",
          "AutoAttack top1 % (Linf 8/255)", "AutoAttack top1 % (Linf 4/255)", "mCE % (vs alexnet)",
          "relative mCE % (vs alexnet)", "corrupted top1 %", "ImageNet-V2 top1 %", "ImageNet-R top1 %",
          "SI-Score top1 %", "relevance FG share %", "pointing game %",
          "BG-gap %", "tokenizer PSNR dB"]
ROWS = [
    ["baseline", "vit_tiny_patch16_224", "5.72", "1.26", "30", "81.25", "6.25", "4.69", "-", "75.00", "90.00",
     "50.00", "70.00", "25.00", "37.50", "61.00", "50.00", "20.00", "-"],
    ["robust_at", "vit_tiny_patch16_224", "5.72", "-", "-", "68.75", "43.75", "-", "37.50", "60.00", "80.00",
     "55.00", "60.00", "-", "-", "72.00", "62.50", "10.00", "-"],
    ["tok", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "24.57"],
]
# best per score column shared by two or more runs: higher accuracy, lower mCE and BG-gap
BOLD = {(0, 5), (1, 6), (1, 9), (1, 10), (1, 11), (0, 12), (1, 15), (1, 16), (1, 17)}


PM = re.compile(r" (\[\d+\.\d+, \d+\.\d+\]|± \d+\.\d+)")  # a number's 95% interval (tests/test_uncertainty.py)
INTERVALS = ("a [lo, hi]: the number and its 95% interval (Wilson for accuracies, bootstrap over images for mCE "
             "and mean scores); written a ± h only where the interval is symmetric to the digits shown")


def plain(rows: list[list[str]]) -> list[list[str]]:
    return [[PM.sub("", cell) for cell in row] for row in rows]


def test_leaderboard_cells(runs):
    board = leaderboard(runs)
    table = board.table()
    assert table.header == HEADER
    assert plain(table.rows) == ROWS
    assert table.bold == BOLD
    assert summary_rows(runs)[0] == HEADER and plain(summary_rows(runs)[1]) == ROWS
    # accuracies without a stored ci95 get the Wilson interval of their n: clean 26/32 correct, [64.69, 91.11]%
    lo, hi = wilson(26, 32)
    assert table.rows[0][5] == f"81.25 [{100 * lo:.2f}, {100 * hi:.2f}]" == "81.25 [64.69, 91.11]"
    assert not any("±" in cell for row in table.rows for cell in row)  # no interval here is symmetric
    # AutoAttack at two budgets got two columns, so no column mixes sample counts (n=32 and n=64)
    assert board.notes() == [INTERVALS]


def test_intervals_are_drawn_as_they_are():
    percent = UNITS["%"][2]
    # 0 of 200 robust: Wilson [0, 1.88]%; "0.00 ± 0.94" would claim accuracies below 0
    assert format_interval(0.0, *wilson(0, 200), percent) == "0.00 [0.00, 1.88]"
    assert format_interval(3 / 300, *wilson(3, 300), percent) == "1.00 [0.34, 2.90]"
    # symmetric to the digits shown: both half-widths read 9.62
    assert format_interval(0.5, *wilson(50, 100), percent) == "50.00 ± 9.62"
    assert format_interval(0.4, 0.3, 0.5, percent) == "40.00 ± 10.00"
    assert format_interval(0.4, 0.3, 0.50004, percent) == "40.00 ± 10.00"  # differs below the shown digits
    assert format_interval(0.4, 0.3, 0.5001, percent) == "40.00 [30.00, 50.01]"
    assert format_interval(60.0, 55.5, 64.25, UNITS["x100"][2]) == "60.00 [55.50, 64.25]"  # mCE, x100 already


def test_leaderboard_shows_lopsided_intervals_as_bounds(tmp_path):
    dirs = []
    for name, robust, n in (("none", 0.0, 200), ("half", 0.5, 100)):
        (tmp_path / name).mkdir()
        entry = {"norm": "Linf", "eps": EPS8, "clean_top1": 0.5, "robust_top1": robust, "n": n}
        (tmp_path / name / "results.json").write_text(json.dumps({"autoattack": entry}))
        dirs.append(tmp_path / name)
    header, rows = summary_rows(dirs)
    assert [row[header.index("AutoAttack top1 % (Linf 8/255)")] for row in rows] == ["0.00 [0.00, 1.88]",
                                                                                   "50.00 ± 9.62"]


def test_leaderboard_notes_differing_sample_counts(runs):
    res = json.loads((runs[1] / "results.json").read_text())
    res["clean"]["n"] = 16
    (runs[1] / "results.json").write_text(json.dumps(res))
    assert leaderboard(runs).notes() == [
        INTERVALS, "clean top1 % compares different sample counts: baseline n=32, robust_at n=16"]


def test_leaderboard_sort(runs):
    assert [r.name for r in leaderboard(runs, sort="clean").runs] == ["baseline", "robust_at", "tok"]
    assert [r.name for r in leaderboard(runs, sort="pgd").runs] == ["robust_at", "baseline", "tok"]
    # lower is better for mCE
    assert [r.name for r in leaderboard(runs, sort="mce").runs] == ["robust_at", "baseline", "tok"]
    assert [r.name for r in leaderboard(runs, sort="psnr").runs] == ["tok", "baseline", "robust_at"]
    with pytest.raises(InputError, match=r"cannot sort by 'autoatack'.*did you mean 'autoattack'"):
        leaderboard(runs, sort="autoatack")


def test_csv_keeps_the_results_numbers(runs):
    text = leaderboard(runs).csv()
    full = list(csv.reader(io.StringIO(text)))
    keep = [j for j, h in enumerate(full[0]) if "ci95" not in h]
    rows = [[row[j] for j in keep] for row in full]
    # after the clean accuracy its Wilson bounds, as fractions
    j = full[0].index("clean top1 [fraction]")
    assert full[0][j + 1 : j + 3] == ["clean top1 [fraction] ci95 low", "clean top1 [fraction] ci95 high"]
    assert [float(v) for v in full[1][j + 1 : j + 3]] == list(wilson(26, 32))
    assert rows[0] == ["run", "model", "params [count]", "FLOPs [count]", "train [seconds]",
                       "clean top1 [fraction]", "PGD top1 (Linf 8/255) [fraction]",
                       "AutoAttack top1 (Linf 8/255) [fraction]", "AutoAttack top1 (Linf 4/255) [fraction]",
                       "mCE (vs alexnet) [percent]", "relative mCE (vs alexnet) [percent]",
                       "corrupted top1 [fraction]", "ImageNet-V2 top1 [fraction]",
                       "ImageNet-R top1 [fraction]", "SI-Score top1 [fraction]",
                       "relevance FG share [fraction]", "pointing game [fraction]", "BG-gap [fraction]",
                       "tokenizer PSNR [dB]"]
    # the exact values of the results files (no rounding), "" where a run lacks the number
    assert rows[1] == ["baseline", "vit_tiny_patch16_224", "5717416", "1258000000", "30.25", "0.8125",
                       "0.0625", "0.046875", "", "75.0", "90.0", "0.5", "0.7", "0.25", "0.375", "0.61", "0.5",
                       "0.2", ""]
    assert rows[2] == ["robust_at", "vit_tiny_patch16_224", "5717416", "", "", "0.6875", "0.4375", "",
                       "0.375", "60.0", "80.0", "0.55", "0.6", "", "", "0.72", "0.625", "0.1", ""]
    assert rows[3] == ["tok", "", *[""] * 16, "24.5678"]
    assert len(rows) == 4


def test_latex_is_booktabs_with_escaped_names(runs):
    lines = [PM.sub("", line) for line in leaderboard(runs).latex().splitlines()]
    assert lines[0] == r"\begin{tabular}{ll" + "r" * 17 + "}"
    assert lines[1] == r"\toprule" and lines[3] == r"\midrule"
    assert lines[-2:] == [r"\bottomrule", r"\end{tabular}"]
    assert lines[2].startswith(r"run & model & params (M) & FLOPs (G) & train s & clean top1 \% & "
                               r"PGD top1 \% (Linf 8/255) & ")
    assert lines[2].endswith(r"BG-gap \% & tokenizer PSNR dB \\")
    assert lines[4] == (r"baseline & vit\_tiny\_patch16\_224 & 5.72 & 1.26 & 30 & \textbf{81.25} & 6.25 & "
                        r"4.69 & - & 75.00 & 90.00 & 50.00 & \textbf{70.00} & 25.00 & 37.50 & 61.00 & "
                        r"50.00 & 20.00 & - \\")
    assert lines[5] == (r"robust\_at & vit\_tiny\_patch16\_224 & 5.72 & - & - & 68.75 & \textbf{43.75} & - & "
                        r"37.50 & \textbf{60.00} & \textbf{80.00} & \textbf{55.00} & 60.00 & - & - & "
                        r"\textbf{72.00} & \textbf{62.50} & \textbf{10.00} & - \\")
    assert lines[6] == "tok & - & " + " & ".join(["-"] * 16) + r" & 24.57 \\"
    assert len(lines) == 9
    assert latex_escape(r"a_b&c%d$e#f{g}h~i^j\k") == (r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i"
                                                      r"\textasciicircum{}j\textbackslash{}k")


def test_text_table_aligns_columns(runs):
    header, rows = summary_rows(runs[:2])
    lines = text_table(header, rows).splitlines()
    assert lines[0].split("  ")[0].rstrip() == "run"
    assert len({len(line) for line in lines}) == 1  # every line padded to the same width
    assert lines[2].startswith("baseline ") and lines[2].rstrip().endswith("20.00")


class Structure(HTMLParser):
    """Checks that every element is closed in order and collects tables and images."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.tables, self.images, self.links = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"id": attrs.get("id"), "rows": 0})
        if tag == "tr" and self.stack and "tbody" in self.stack:
            self.tables[-1]["rows"] += 1
        if tag == "img":
            self.images.append(attrs)
        if tag in ("a", "link", "script"):
            self.links.append((tag, attrs.get("href") or attrs.get("src")))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def parse(page: str) -> Structure:
    s = Structure()
    s.feed(page)
    assert not s.errors and not s.stack, (s.errors, s.stack)
    return s


def test_report_html_is_self_contained(runs, tmp_path):
    out = build_report(runs, tmp_path / "cmp" / "report.html", title="cmp & co")
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<title>cmp &amp; co</title>" in page
    s = parse(page)
    # leaderboard, adversarial, 2 corruption tables (one per run), shifts, relevance, background, tokenizer
    assert [t["rows"] for t in s.tables] == [3, 4, 2, 2, 6, 2, 2, 1]
    assert s.tables[0]["id"] == "leaderboard-table"
    assert "<td><strong>81.25 [64.69, 91.11]</strong></td>" in page and "<td>68.75 [51.43, 82.05]</td>" in page
    # every image embedded as a decodable PNG; no external resource, no script
    for img in s.images:
        data = base64.b64decode(img["src"].removeprefix("data:image/png;base64,"), validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(data)).size == (int(img["width"]),
                                                                                          int(img["height"]))
    # drawn from the numbers and listed by benchmarks, each in its section (eps_sweep's own file is redrawn)
    assert [img["alt"] for img in s.images] == ["Training curves", "Robust accuracy vs eps",
                                                "baseline: pgd (pgd examples)",
                                                "Accuracy vs corruption severity",
                                                "Accuracy per distribution shift",
                                                "baseline: relevance (relevance grid)",
                                                "tok: tokenizer (reconstructions)"]
    assert all(tag == "a" and (href.startswith("#") or href in ("report.tex", "report.csv"))
               for tag, href in s.links)
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)
    # the failed self-check is shown, the one that passed is not
    assert "failed check: baseline / autoattack / square: Square broke 3 of 32 images" in page
    assert "robust_le_clean" not in page.split("Raw results")[0]
    # LaTeX and CSV beside the page hold the same leaderboard
    assert (out.parent / "report.tex").read_text() == leaderboard(runs).latex()
    assert (out.parent / "report.csv").read_text() == leaderboard(runs).csv()


def test_report_sections_hold_the_numbers(runs, tmp_path):
    page = build_report(runs, tmp_path / "report.html").read_text()
    # corruption table of baseline: per-severity top1, mean over severities, CE and relative CE (ratios x100)
    assert ("<tr><td>gaussian_noise</td><td>70.00</td><td>60.00</td><td>50.00</td><td>40.00</td>"
            "<td>30.00</td><td>50.00</td><td>80.00</td><td>85.00</td></tr>") in page
    assert "mCE 75.00, relative mCE 90.00, reference: alexnet" in page  # stored x100 already
    # shift table: clean first, then shifts in a fixed order, n per test set, "-" where a run lacks one
    assert "<tr><td>clean</td><td>32</td><td>81.25</td><td>68.75</td></tr>" in page
    assert "<tr><td>ImageNet-R</td><td>100</td><td>25.00</td><td>-</td></tr>" in page
    # SI-Score: the pooled top1, then each factor
    assert ("<tr><td>SI-Score</td><td>20</td><td>37.50</td><td>-</td></tr>"
            "<tr><td>SI-Score location</td><td>10</td><td>40.00</td><td>-</td></tr>"
            "<tr><td>SI-Score rotation</td><td>10</td><td>35.00</td><td>-</td></tr>") in page
    assert ("<tr><td>robust_at</td><td class='t'>PGD-10, 2 restarts</td><td class='t'>Linf 8/255</td>"
            "<td class='t'>straight-through</td><td>32</td><td>68.75</td><td>43.75</td></tr>") in page
    assert ("<tr><td>robust_at</td><td class='t'>rollout</td><td>72.00</td><td>62.50</td><td>40.00</td>"
            "<td>16</td></tr>") in page
    assert ("<tr><td>robust_at</td><td>70.00</td><td>45.00</td><td>60.00</td><td>50.00</td><td>10.00</td>"
            "<td>16</td></tr>") in page
    assert ("<tr><td>tok</td><td>24.57</td><td>300.2</td><td>400</td><td>112</td><td>512</td>"
            "<td>64</td></tr>") in page


def test_markdown_twin_links_figures(runs, tmp_path):
    out = build_report(runs, tmp_path / "cmp" / "report.html")
    md = PM.sub("", out.with_suffix(".md").read_text())
    assert "| run | model | params (M) |" in md
    assert "| baseline | vit_tiny_patch16_224 | 5.72 | 1.26 | 30 | **81.25** |" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 7 and all((out.parent / link).is_file() for link in links)
    assert "../runs/tok/figures/reconstructions.png" in links


def test_single_run_report_defaults_beside_the_run(runs):
    out = build_report([runs[2]])
    assert out == runs[2] / "report.html"
    s = parse(out.read_text())
    assert [t["rows"] for t in s.tables] == [1, 1]  # leaderboard, tokenizer
    assert (runs[2] / "report.md").is_file() and (runs[2] / "report.csv").read_text().startswith("run,model,")


def test_results_file_and_same_named_runs(tmp_path):
    a, b = tmp_path / "x" / "baseline", tmp_path / "y" / "baseline"
    for run, top1 in ((a, 0.5), (b, 0.75)):
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"clean": {"top1": top1, "n": 4}}))
    other = tmp_path / "z" / "ema.json"  # a results file named by `vitrobust evaluate --out`
    other.parent.mkdir()
    other.write_text(json.dumps({"clean": {"top1": 0.25, "n": 4}}))
    _, rows = summary_rows([a, b, other])
    assert [r[0] for r in rows] == ["x/baseline", "y/baseline", "ema"]
    assert [r[-1] for r in plain(rows)] == ["50.00", "75.00", "25.00"]


def test_failed_checks_lists_only_failures(runs):
    assert failed_checks(runs) == ["baseline / autoattack / square: Square broke 3 of 32 images"]


def test_missing_listed_figure_becomes_a_note(runs, tmp_path):
    (runs[0] / "figures" / "relevance_grid.png").unlink()
    page = build_report(runs, tmp_path / "report.html").read_text()
    assert "baseline: relevance lists figure relevance_grid.png, but" in page
    assert len(parse(page).images) == 6


@pytest.mark.parametrize("content, needle", [
    (None, "has no results.json: run `vitrobust evaluate"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object of benchmark entries"),
])
def test_bad_results_give_clear_errors(tmp_path, content, needle):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "results.json").write_text(content)
    with pytest.raises(UserError, match=re.escape(needle)):
        build_report([run], tmp_path / "report.html")
    with pytest.raises(InputError, match="does not exist"):
        build_report([tmp_path / "nowhere"])


def test_out_names_the_html_page(runs, tmp_path):
    with pytest.raises(InputError, match="should name the HTML page"):
        build_report(runs, tmp_path / "report.md")
    assert build_report(runs[2:], tmp_path / "plain") == tmp_path / "plain.html"
    assert (tmp_path / "plain.md").is_file()


def test_cli_report_flags(runs, tmp_path, capsys):
    out = tmp_path / "board" / "cmp.html"
    args = ["--out", str(out), "--title", "My comparison", "--sort", "pgd"]
    assert main(["report", *map(str, runs), *args]) == 0
    printed = capsys.readouterr().out
    for suffix in (".html", ".md", ".tex", ".csv"):
        assert str(out.with_suffix(suffix)) in printed
    assert "<h1>My comparison</h1>" in out.read_text()
    assert [r[0] for r in csv.reader(io.StringIO(out.with_suffix(".csv").read_text()))][1:] == \
        ["robust_at", "baseline", "tok"]
    assert main(["report", str(runs[0]), "--out", str(out), "--sort", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot sort by 'nope'")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shift_results_in_every_layout(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # nested under "shifts", factors as plain sub-entries without a pooled top1, and a shift without top1
    (run / "results.json").write_text(json.dumps({"shifts": {
        "imagenet_a": {"top1": 0.125, "n": 8},
        "si_score": {"size": {"top1": 0.5, "n": 4}, "rotation": {"top1": 0.25, "n": 4}},
        "objectnet": {"skipped": "no data"}}}))
    (loaded,) = load_runs([run])
    assert {k: (label, e["top1"]) for k, (label, e) in loaded.shifts().items()} == {
        "imagenet_a": ("ImageNet-A", 0.125), "si_score/size": ("SI-Score size", 0.5),
        "si_score/rotation": ("SI-Score rotation", 0.25)}
    header, rows = summary_rows([run])
    assert header[2:] == ["ImageNet-A top1 %", "SI-Score size top1 %", "SI-Score rotation top1 %"]
    assert plain(rows) == [["run", "-", "12.50", "50.00", "25.00"]]


def test_best_marks_ties_and_needs_two_runs(tmp_path):
    dirs = []
    for name, top1, bg_gap in (("a", 0.5, 0.3), ("b", 0.5, 0.1), ("c", 0.25, None)):
        (tmp_path / name).mkdir()
        res = {"clean": {"top1": top1, "n": 4}}
        if bg_gap is not None:
            res["background"] = {"bg_gap": bg_gap, "n": 4}
        (tmp_path / name / "results.json").write_text(json.dumps(res))
        dirs.append(tmp_path / name)
    table = leaderboard(dirs).table()
    assert table.header == ["run", "model", "clean top1 %", "BG-gap %"]
    assert table.bold == {(0, 2), (1, 2), (1, 3)}  # both 50.00 are best; the smaller BG-gap is best
    assert leaderboard(dirs[:1]).table().bold == set()
