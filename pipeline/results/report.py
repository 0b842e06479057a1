"""Self-contained HTML reports (images embedded, no scripts): one per run, one per grid.

Our accuracies are last-epoch means ± std; the paper's numbers (configs/reference/paper.yaml)
are best-epoch and are labelled so.
"""
from __future__ import annotations

import base64
import html
import statistics
from importlib import resources

import yaml

from m3d_condense.pipeline.config.schema import NAMED_METHODS, named_method
from m3d_condense.pipeline.data import storage

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:4px 10px;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #ddd}
.note{color:#555;font-size:90%}"""


LABELS = {"m3d": "M3D", "dm": "DM", "whole": "whole set"}
ORDERS = ("mean", "variance", "skewness", "kurtosis")


def paper_numbers() -> dict:
    return yaml.safe_load(resources.files("m3d_condense.configs").joinpath("reference/paper.yaml").read_text())


def paper_accuracy(preset: str, ipc: int, arch: str, method: str = "m3d") -> float | None:
    """The paper's accuracy for this dataset, IPC, evaluation architecture and method (m3d, the
    Table 2 baselines random/herding/dm, or whole: the whole training set), if published."""
    paper = paper_numbers()
    if method == "whole":
        return paper.get(arch, {}).get(preset, {}).get("whole")
    if method != "m3d":
        return paper["baselines"].get(preset, {}).get(method, {}).get(ipc) if arch == "convnet3" else None
    if arch != "convnet3" and ipc == 10 and preset in paper["cross_architecture"]:
        return paper["cross_architecture"][preset].get(arch)
    return paper.get(arch, {}).get(preset, {}).get(ipc)


def _table(header: list[str], rows: list[list], caption: str = "") -> str:
    def cell(tag: str, i: int, v) -> str:
        left = ' class="l"' if i == 0 else ""  # the first column holds names: left-aligned
        return f"<{tag}{left}>{html.escape(str(v))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


def _img(url: str, alt: str) -> str:
    try:
        data = base64.b64encode(storage.read_bytes(url)).decode()
    except FileNotFoundError:
        return f"<p class='note'>({html.escape(alt)} not available)</p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def run_report(run_url: str, summary: dict) -> str:
    """The HTML report of one run directory (its summary.json, grid.png and curves.png)."""
    s = summary
    parts = [_table(["setting", "value"], [[k, s.get(k)] for k in ("preset", "method", "ipc", "factor", "kernel",
                                                                     "update_mode", "iterations", "seed", "backend",
                                                                     "workers", "condense_seconds")], "run")]
    rows = []
    for e in s.get("evals", []):
        paper = paper_accuracy(s["preset"], s["ipc"], e["arch"], method_name(s))
        rows.append([e["arch"], e["epochs"], len(e["runs"]),
                     f"{_pct(e['accuracy_mean'])} ± {_pct(e['accuracy_std'])}", _pct(e["best_epoch_accuracy_mean"]),
                     "–" if paper is None else f"{paper:.1f}"])
    if rows:
        parts.append(_table(["architecture", "epochs", "runs", "ours: last epoch (%)", "ours: best epoch (%)",
                             f"paper {LABELS.get(method_name(s), method_name(s))}: best epoch (%)"], rows, "test accuracy"))
        parts.append("<p class='note'>Last epoch is our number. Best epoch picks the epoch on the test set, as "
                     "the reference code and the paper report; it is shown only for comparison.</p>")
    if s.get("moments"):
        orders = list(next(iter(s["moments"].values())))
        parts.append(_table(["set", *orders], [[name, *(f"{v:.4g}" for v in g.values())]
                                               for name, g in s["moments"].items()],
                            "moment gaps to the real data (fresh random encoders)"))
    parts.append("<h2>Synthetic images</h2>" + _img(storage.join(run_url, "grid.png"), "synthetic images per class"))
    parts.append("<h2>Curves</h2>" + _img(storage.join(run_url, "curves.png"), "loss and accuracy curves"))
    return _page(f"M3D run: {s['preset']} {s['method']} IPC {s['ipc']}", "".join(parts))


def method_name(summary: dict) -> str:
    """The comparison's name of the run a summary describes (DM for M3D with the linear kernel)."""
    return named_method(summary["method"], summary.get("kernel"))


def _mean_std(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.pstdev(values):.2f}"


def accuracy_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(header, lines) of a grid: per dataset, IPC and architecture, each method's last-epoch
    accuracy (mean ± std over seeds and evaluation runs) with the paper's number in brackets."""
    rank = {m: i for i, m in enumerate(NAMED_METHODS)}  # a variant "dm:lr=0.01" sorts after its base "dm"
    methods = sorted({r["method"] for r in rows}, key=lambda m: (rank.get(m.split(":")[0], len(rank)), m))
    cells: dict = {}
    for r in rows:
        ipc = "whole set" if r["method"] == "whole" else r["ipc"]
        cells.setdefault((r["dataset"], ipc, r["arch"]), {}).setdefault(r["method"], []).append(r["accuracy"])
    lines = []
    for (dataset, ipc, arch), by_method in sorted(cells.items(), key=lambda kv: (kv[0][0], str(kv[0][1]).isalpha(),
                                                                                 str(kv[0][1]).zfill(6), kv[0][2])):
        line = [dataset, ipc, arch]
        for m in methods:
            accs = by_method.get(m, [])
            paper = paper_accuracy(dataset, ipc, arch, m.split(":")[0]) if accs else None
            line.append("–" if not accs else _mean_std(accs) + ("" if paper is None else f" ({paper:.1f})"))
        lines.append(line)
    return ["dataset", "IPC", "architecture", *methods], lines


def moment_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(header, lines): mean moment gaps per dataset, IPC and set (each method's result, and the
    initial set that M3D/DM start from); no lines if the runs computed none."""
    gaps: dict = {}
    for r in rows:
        for name, label in (("synthetic", r["method"]), ("initial", "initial (M3D/DM start)")):
            if r.get(f"moment_{name}_mean") is not None:
                key = (r["dataset"], r["ipc"], label)
                gaps.setdefault(key, []).append([r[f"moment_{name}_{o}"] for o in ORDERS])
    lines = [[d, ipc, label, *(f"{statistics.fmean(col):.4g}" for col in zip(*v, strict=True))]
             for (d, ipc, label), v in sorted(gaps.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))]
    return ["dataset", "IPC", "set", *ORDERS], lines


ACCURACY_CAPTION = ("test accuracy (%): ours at the last epoch, mean ± std over seeds and evaluation runs; "
                    "(the paper's number: best epoch, full protocol)")
MOMENT_CAPTION = "moment gaps to the real data under fresh random encoders (lower is closer; paper Table 1)"


def grid_report(rows: list[dict]) -> str:
    """The HTML report of a result grid: the accuracy table, the moment table, the protocols."""
    body = _table(*accuracy_table(rows), ACCURACY_CAPTION)
    header, lines = moment_table(rows)
    if lines:
        body += _table(header, lines, MOMENT_CAPTION)
    protocols = sorted({r["protocol"] for r in rows})
    body += "<p class='note'>Protocol (overrides): " + html.escape(" | ".join(protocols) or "preset defaults") + "</p>"
    return _page("M3D result grid", body)


def grid_markdown(rows: list[dict]) -> str:
    """The same two tables as Markdown (for BENCHMARKS.md and the terminal)."""
    out = []
    for (header, lines), caption in ((accuracy_table(rows), ACCURACY_CAPTION), (moment_table(rows), MOMENT_CAPTION)):
        if lines:
            out += [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(str(v) for v in line) + " |" for line in lines]
            out.append("")
    return "\n".join(out)


def write_run_report(run_url: str, summary: dict) -> str:
    url = storage.join(run_url, "report.html")
    storage.write_bytes_atomic(url, run_report(run_url, summary).encode())
    return url
