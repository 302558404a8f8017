"""The study's figures: interactive (plotly) in one self-contained ``report.html``, and static (matplotlib)
PNG files under ``figures/`` for papers and READMEs.

Four figures, the same in both forms: parallel coordinates of all trials, the importance of each
hyperparameter, validation accuracy against each hyperparameter, and the learning curves of the top
trials. The HTML embeds plotly.js inline (no CDN): it opens from disk with no network.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from study.core.folder import FIGURES_DIR, REPORT_FILE, write_atomic, write_text_atomic
from study.core.values import fmt, fmt_acc
from study.core.vocabulary import BOOK_FIGURE
from study.findings.analysis import (CONFIRM_COLUMNS, Analysis, answer_lines, confirmation_rows, describe_warm_start, noise_note,
                                     reruns_on_test, top_table_rows, versus_book_on_test)
from study.findings.importance import describe_check
from study.findings.ranges import describe_range, describe_space
from study.findings.reading import StudyData, baseline_acc, baseline_number

PNG_NAMES = ("parallel.png", "importance.png", "params.png", "curves.png")
STATUS_COLORS = {"completed": "#1f77b4", "stopped early": "#ff7f0e", "diverged": "#d62728", "errored": "#7f7f7f", "timed_out": "#8c564b", "running": "#9467bd"}
CURVE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


# --- axes shared by both renderings ------------------------------------------------------------------
class Axis:
    """One hyperparameter as a plotting axis: values mapped to numbers, a range, and tick labels."""

    def __init__(self, data: StudyData, param: str):
        self.param = param
        self.log = data.is_log(param)
        series = data.trials[param]
        self.categorical = data.is_categorical(param) or not pd.api.types.is_numeric_dtype(series)
        if self.categorical:
            self.choices = [str(c) for c in data.choices(param)]
            for v in series.dropna().astype(str):
                if v not in self.choices:
                    self.choices.append(v)
            n = len(self.choices)
            self.range = (-0.5, 0.5) if n == 1 else (0.0, float(n - 1))
            self.tickvals, self.ticktext = list(range(n)), list(self.choices)
            return
        self.choices = []
        present = pd.to_numeric(series, errors="coerce").dropna()
        bounds = data.bounds(param)
        lo, hi = bounds if bounds else (float(present.min()), float(present.max())) if len(present) else (0.0, 1.0)
        if len(present):  # a value outside the space (an edited space) still fits
            lo, hi = min(lo, float(present.min())), max(hi, float(present.max()))
        if self.log:
            lo, hi = math.log10(max(lo, 1e-300)), math.log10(max(hi, 1e-300))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.range = (lo, hi)
        if self.log:
            decades = list(range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1))
            ticks = decades if len(decades) >= 2 else list(np.linspace(lo, hi, 3))
            self.tickvals, self.ticktext = ticks, [fmt(float(10 ** t)) if isinstance(t, float) else f"1e{t}" for t in ticks]
        elif data.settings.space.get(param, {}).get("type") == "int" and hi - lo <= 10:
            self.tickvals = list(range(math.ceil(lo), math.floor(hi) + 1))
            self.ticktext = [str(t) for t in self.tickvals]
        else:
            self.tickvals = list(np.linspace(lo, hi, 5))
            self.ticktext = [fmt(float(t)) for t in self.tickvals]

    def values(self, series: pd.Series) -> np.ndarray:
        if self.categorical:
            index = {c: i for i, c in enumerate(self.choices)}
            return np.array([index.get(str(v), np.nan) if v is not None and not pd.isna(v) else np.nan for v in series], dtype=float)
        x = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        return np.log10(np.where(x > 0, x, np.nan)) if self.log else x

    def normalized(self, series: pd.Series) -> np.ndarray:
        lo, hi = self.range
        return (self.values(series) - lo) / (hi - lo)


def _label(row: pd.Series, params: list[str]) -> str:
    return ", ".join(f"{p}={fmt(row[p])}" for p in params)


def _curve_name(row: pd.Series) -> str:
    tag = ", the book's recipe" if bool(row.get("baseline")) else ""
    return f"#{int(row['rank'])} (trial {fmt(row['optuna_trial'])}{tag}): {fmt_acc(row['best_val_acc'])}"


def starred(data: StudyData) -> tuple[pd.DataFrame, str]:
    """The trial every plot marks: the confirmed winner (else rank 1), as a one-row frame, and its legend name."""
    row, what = data.winner()
    if row is None:
        return data.scored.head(0), ""
    return data.scored[data.scored["optuna_trial"] == row["optuna_trial"]], f"{what} (trial {int(row['optuna_trial'])})"


def curve_trials(data: StudyData, curves: int) -> pd.DataFrame:
    """The top ``curves`` trials whose learning curves are drawn, the marked one always among them."""
    top = data.scored.head(curves)
    marked, _ = starred(data)
    if len(marked) and not marked["optuna_trial"].isin(top["optuna_trial"]).all():
        top = pd.concat([marked, top.head(max(curves - 1, 0))])
    return top


def learning_curves(data: StudyData, curves: int) -> tuple[list[pd.DataFrame], list[tuple[pd.Series, pd.DataFrame]]]:
    """Each trial's epochs in order, for the learning-curve figure: the other trials' (drawn grey), then the top
    ``curves`` trials' (``curve_trials``), each with its row of trials.parquet."""
    epochs = data.epochs
    top = curve_trials(data, curves)
    top_ids = set(top["trial_id"])
    others = [group.sort_values("epoch") for trial_id, group in epochs.groupby("trial_id", sort=False) if trial_id not in top_ids]
    return others, [(row, epochs[epochs["trial_id"] == row["trial_id"]].sort_values("epoch")) for _, row in top.iterrows()]


def last_epoch(data: StudyData) -> int:
    """The epoch axis' end: the study's epochs (the most any trial ran, where study.json lacks them)."""
    return int(data.settings.base.get("epochs") or (data.epochs["epoch"].max() if len(data.epochs) else 1))


def _acc_range(values: pd.Series) -> tuple[float, float]:
    v = values.dropna()
    if not len(v):
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    return (lo - 0.05, hi + 0.05) if hi - lo < 1e-9 else (lo, hi)


# --- plotly (the HTML report) ------------------------------------------------------------------------
def plotly_figures(analysis: Analysis, curves: int) -> dict:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data, imp = analysis.data, analysis.importance
    scored = data.scored
    figures = {}

    # parallel coordinates
    dims = []
    for p in data.params:
        axis = Axis(data, p)
        dims.append(dict(label=p + (" (log)" if axis.log else ""), values=axis.values(scored[p]), range=list(axis.range),
                         tickvals=axis.tickvals, ticktext=axis.ticktext))
    lo, hi = _acc_range(scored["best_val_acc"])
    dims.append(dict(label="best val acc", values=scored["best_val_acc"].to_numpy(dtype=float), range=[lo, hi]))
    fig = go.Figure(go.Parcoords(
        line=dict(color=scored["best_val_acc"].to_numpy(dtype=float), colorscale="Viridis", cmin=lo, cmax=hi, showscale=True,
                  colorbar=dict(title=dict(text="val acc"))),
        dimensions=dims, labelangle=0))
    fig.update_layout(height=460, margin=dict(l=80, r=60, t=60, b=30))
    figures["parallel"] = fig

    # importance
    if imp.values:
        names = list(imp.values)[::-1]
        fig = go.Figure(go.Bar(x=[imp.values[n] for n in names], y=names, orientation="h", marker_color="#1f77b4",
                               text=[f"{imp.values[n]:.2f}" for n in names], textposition="auto"))
        fig.update_layout(height=120 + 40 * len(names), xaxis_title="importance (median share over resamples)", margin=dict(l=120, r=30, t=30, b=50))
        figures["importance"] = fig

    # validation accuracy against each hyperparameter
    best, star_name = starred(data)
    n = len(data.params)
    cols = min(3, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=data.params, shared_yaxes=True,
                        horizontal_spacing=0.06, vertical_spacing=0.16 if rows > 1 else 0.1)
    shown = set()
    for i, p in enumerate(data.params):
        r, c = i // cols + 1, i % cols + 1
        axis = Axis(data, p)
        for status, group in scored.groupby("status", sort=False):
            x = group[p].astype(str) if axis.categorical else group[p]
            fig.add_trace(go.Scatter(
                x=x, y=group["best_val_acc"], mode="markers", name=status, legendgroup=status, showlegend=status not in shown,
                marker=dict(color=STATUS_COLORS.get(status, "#333"), size=9, line=dict(width=0.5, color="white")),
                text=[f"#{int(row['rank'])}: {_label(row, data.params)}" for _, row in group.iterrows()],
                hovertemplate="%{text}<br>val acc %{y:.3f}<extra></extra>"), row=r, col=c)
            shown.add(status)
        if len(best):
            x = best[p].astype(str) if axis.categorical else best[p]
            fig.add_trace(go.Scatter(x=x, y=best["best_val_acc"], mode="markers", name=star_name, legendgroup="best",
                                     showlegend=i == 0, marker=dict(symbol="star", size=16, color="gold", line=dict(width=1, color="black")),
                                     hoverinfo="skip"), row=r, col=c)
        # the searched range (every choice), so where the trials fell within it shows
        pad = 0.04 * (axis.range[1] - axis.range[0])
        if axis.categorical:
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=axis.choices,
                             range=[axis.range[0] - 0.5, axis.range[1] + 0.5], row=r, col=c)
        else:
            fig.update_xaxes(type="log" if axis.log else "linear", range=[axis.range[0] - pad, axis.range[1] + pad],
                             dtick=1 if not axis.log and axis.ticktext == [str(t) for t in axis.tickvals] else None, row=r, col=c)
        if c == 1:
            fig.update_yaxes(title_text="best val acc", row=r, col=c)
    fig.update_layout(height=330 * rows + 60, margin=dict(l=60, r=20, t=50, b=40))
    figures["params"] = fig

    # learning curves
    fig = go.Figure()
    others, top = learning_curves(data, curves)
    for k, group in enumerate(others):
        fig.add_trace(go.Scatter(x=group["epoch"], y=group["val_acc"], mode="lines+markers", name="other trials",
                                 legendgroup="other", showlegend=k == 0, line=dict(color="rgba(128,128,128,0.35)", width=1),
                                 marker=dict(size=4, color="rgba(128,128,128,0.35)"), hoverinfo="skip"))
    for k, (row, group) in enumerate(top):
        fig.add_trace(go.Scatter(x=group["epoch"], y=group["val_acc"], mode="lines+markers", name=_curve_name(row),
                                 line=dict(color=CURVE_COLORS[k % len(CURVE_COLORS)], width=2.5),
                                 hovertemplate=f"{html.escape(_label(row, data.params))}<br>epoch %{{x}}: val acc %{{y:.3f}}<extra></extra>"))
    max_epoch = last_epoch(data)
    fig.update_layout(height=420, xaxis_title="epoch", yaxis_title="validation accuracy", margin=dict(l=60, r=20, t=30, b=50),
                      xaxis=dict(dtick=1 if max_epoch <= 20 else None, range=[0.8, max_epoch + 0.2]))
    figures["curves"] = fig

    # the confirmed configurations: accuracy against training time, the front of those nothing beats on both
    conf = analysis.confirmation
    if conf is not None and len(conf.table) > 1 and conf.table["seconds_per_run"].notna().all():
        t = conf.table.sort_values("seconds_per_run")
        front = t[t["front"]]
        fig = go.Figure()
        fig.add_trace(go.Scatter(
            x=t["seconds_per_run"], y=t["mean"], mode="markers+text", name="confirmed configurations",
            text=[f"trial {int(n)}" for n in t["optuna_trial"]], textposition="top center",
            error_y=dict(type="data", symmetric=False, array=(t["ci_high"] - t["mean"]).fillna(0), arrayminus=(t["mean"] - t["ci_low"]).fillna(0)),
            marker=dict(size=11, color=["#2ca02c" if w else "#7f7f7f" for w in t["within_noise"]])))
        fig.add_trace(go.Scatter(x=front["seconds_per_run"], y=front["mean"], mode="lines", name="the front (nothing beats them on both)",
                                 line=dict(color="#1f77b4", dash="dot")))
        fig.update_layout(height=380, xaxis_title="training seconds a run (mean over folds)", yaxis_title="mean val acc over folds",
                          margin=dict(l=60, r=20, t=30, b=50))
        figures["cost"] = fig
    return figures


# --- matplotlib (the PNG files) ----------------------------------------------------------------------
def write_pngs(analysis: Analysis, out: Path, curves: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    data, imp = analysis.data, analysis.importance
    scored = data.scored
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        path = out / name
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight"))
        plt.close(fig)
        written.append(path)

    title = f"study {data.settings.name}"

    # parallel coordinates
    axes = [Axis(data, p) for p in data.params]
    lo, hi = _acc_range(scored["best_val_acc"])
    k = len(axes)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * (k + 1) + 1.5), 4.8))
    norm = colors.Normalize(lo, hi)
    cmap = matplotlib.colormaps["viridis"]
    columns = [a.normalized(scored[a.param]) for a in axes] + [((scored["best_val_acc"].to_numpy(dtype=float) - lo) / (hi - lo))]
    matrix = np.vstack(columns).T if len(scored) else np.zeros((0, k + 1))
    marked, _ = starred(data)
    mark = set(marked["optuna_trial"]) if len(marked) else set()
    key = scored["best_val_acc"].to_numpy(dtype=float) + np.where(scored["optuna_trial"].isin(mark), np.inf, 0)
    order = np.argsort(key)  # the winner drawn last, on top, and thick
    for i in order:
        acc = float(scored["best_val_acc"].iloc[i])
        ax.plot(range(k + 1), matrix[i], color=cmap(norm(acc)), lw=3.0 if scored["optuna_trial"].iloc[i] in mark else 1.3, alpha=0.9)
    for j, axis in enumerate(axes):
        ax.axvline(j, color="black", lw=0.8)
        span = axis.range[1] - axis.range[0]
        for v, t in zip(axis.tickvals, axis.ticktext):
            ax.text(j - 0.04, (v - axis.range[0]) / span, t, ha="right", va="center", fontsize=7)
    ax.axvline(k, color="black", lw=0.8)
    for v in np.linspace(lo, hi, 5):
        ax.text(k - 0.04, (v - lo) / (hi - lo), f"{v:.3f}", ha="right", va="center", fontsize=7)
    ax.set_xticks(range(k + 1), [a.param + (" (log)" if a.log else "") for a in axes] + ["best val acc"], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.4, k + 0.15)
    ax.set_ylim(-0.05, 1.05)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="best val acc", pad=0.02)
    ax.set_title(f"{title}: {len(scored)} trials, parallel coordinates")
    save(fig, "parallel.png")

    # importance
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.45 * max(len(data.params), 1)))
    if imp.values:
        names = list(imp.values)[::-1]
        shares = [imp.values[n] for n in names]
        ax.barh(names, shares, color="#1f77b4")
        for y, s in enumerate(shares):
            ax.text(s, y, f" {s:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, max(shares) * 1.18 if max(shares) > 0 else 1)
        ax.set_xlabel("importance (median share over resamples)")
        ax.set_title(f"{title}: {imp.method}", fontsize=9)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "importance not computable:\n" + _wrap(imp.note, 70), ha="center", va="center", fontsize=9, wrap=True)
        ax.set_title(f"{title}: hyperparameter importance", fontsize=9)
    save(fig, "importance.png")

    # validation accuracy against each hyperparameter
    n = max(len(data.params), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    best, star_name = starred(data)
    fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    for i, axis in enumerate(axes):
        ax = grid[i // cols][i % cols]
        for status, group in scored.groupby("status", sort=False):
            x = axis.values(group[axis.param])
            if axis.categorical:
                x = x + rng.uniform(-0.12, 0.12, len(x))
            elif axis.log:
                x = 10 ** x
            ax.scatter(x, group["best_val_acc"], s=30, color=STATUS_COLORS.get(status, "#333"), label=status, edgecolor="white", lw=0.5)
        if len(best):
            x = axis.values(best[axis.param])
            ax.scatter(10 ** x if axis.log and not axis.categorical else x, best["best_val_acc"], marker="*", s=220,
                       color="gold", edgecolor="black", lw=0.8, label=star_name, zorder=5)
        if axis.categorical:
            ax.set_xticks(axis.tickvals, axis.ticktext, rotation=30, ha="right", fontsize=8)
            ax.set_xlim(axis.range[0] - 0.5, axis.range[1] + 0.5)
        elif axis.log:
            ax.set_xscale("log")
            ax.set_xlim(10 ** axis.range[0] / 1.3, 10 ** axis.range[1] * 1.3)
        else:
            pad = 0.05 * (axis.range[1] - axis.range[0])
            ax.set_xlim(axis.range[0] - pad, axis.range[1] + pad)
        ax.set_title(axis.param, fontsize=10)
        ax.grid(alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("best val acc")
    for j in range(len(axes), rows * cols):
        grid[j // cols][j % cols].axis("off")
    handles, labels = grid[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(f"{title}: validation accuracy against each hyperparameter", y=1.04, fontsize=11)
    fig.tight_layout()
    save(fig, "params.png")

    # learning curves
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    others, top = learning_curves(data, curves)
    for k, group in enumerate(others):
        ax.plot(group["epoch"], group["val_acc"], color="grey", alpha=0.35, lw=1, marker=".", label="other trials" if k == 0 else None)
    for j, (row, group) in enumerate(top):
        ax.plot(group["epoch"], group["val_acc"], color=CURVE_COLORS[j % len(CURVE_COLORS)], lw=2.2, marker="o", label=_curve_name(row))
    max_epoch = last_epoch(data)
    if max_epoch <= 20:
        ax.set_xticks(range(1, max_epoch + 1))
    ax.set_xlim(0.8, max_epoch + 0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    if others or top:  # a study killed before any epoch has no curve to name
        ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{title}: learning curves of the top {len(top)} trial(s)")
    save(fig, "curves.png")

    conf = analysis.confirmation  # accuracy against training time, the front
    if conf is not None and len(conf.table) > 1 and conf.table["seconds_per_run"].notna().all():
        t = conf.table.sort_values("seconds_per_run")
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        err = np.vstack([(t["mean"] - t["ci_low"]).fillna(0), (t["ci_high"] - t["mean"]).fillna(0)])
        ax.errorbar(t["seconds_per_run"], t["mean"], yerr=err, fmt="none", ecolor="#999", capsize=3)
        ax.scatter(t["seconds_per_run"], t["mean"], c=["#2ca02c" if w else "#7f7f7f" for w in t["within_noise"]], s=50, zorder=3)
        for _, r in t.iterrows():
            ax.annotate(f"trial {int(r['optuna_trial'])}", (r["seconds_per_run"], r["mean"]), textcoords="offset points", xytext=(4, 6), fontsize=8)
        front = t[t["front"]]
        ax.plot(front["seconds_per_run"], front["mean"], ":", color="#1f77b4", label="the front")
        ax.set_xlabel("training seconds a run (mean over folds)")
        ax.set_ylabel("mean val acc over folds")
        ax.set_title(f"{title}: accuracy against training time (green: within noise of the winner)", fontsize=9)
        ax.legend(fontsize=8)
        save(fig, "cost.png")
    return written


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


# --- the HTML page -----------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto; max-width: 1320px; color: #222; padding: 0 16px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.note { color: #8a5300; background: #fff7e6; padding: 6px 10px; border-left: 3px solid #f0a020; }
.muted { color: #666; font-size: 13px; }
"""


def html_table(columns: list[str], rows: list[list[str]], left: set[str] = frozenset()) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{html.escape(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(f'<td class="{"l" if c in left else ""}">{html.escape(str(v))}</td>' for c, v in zip(columns, row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _rerun_section(data: StudyData) -> str:
    runs = reruns_on_test(data)
    if not runs:
        return ('<p class="muted">No final evaluation yet: <code>python -m study.rerun '
                f'{html.escape(str(data.folder.path))}</code> retrains the confirmed winner and the book\'s recipe with the '
                "same seeds on train + validation and measures both on the test split.</p>")
    from study.findings.model import MODEL_DIR, MODEL_FILE  # after a rerun only: it loads torch, as the per-class part does

    rerun = data.rerun
    parts = []
    for run in runs:
        group = rerun[rerun["optuna_trial"] == run.optuna_trial]
        book = f"; {html.escape(BOOK_FIGURE)}" if run.comparable_to_book else ""
        tag = ", the book's recipe" if run.baseline else ""
        parts.append(f"<p>rank {run.rank} (trial {run.optuna_trial}{tag}): test accuracy <b>{html.escape(run.describe())}</b> "
                     f"(mean &plusmn; sd, {run.epochs} epoch(s) on train + validation){book}</p>")
        cols = ["seed", "test_acc", "test_loss", "epochs", "seconds", "status"]
        rows = [[fmt(r["seed"]), fmt_acc(r["test_acc"]), fmt(r["test_loss"]), fmt(r["epochs"]), f"{r['seconds']:.0f}", str(r["status"])]
                for _, r in group.sort_values("seed").iterrows()]
        parts.append(html_table(cols, rows, {"status"}))
        parts.append(_classes_part(data, run.optuna_trial))
        versus = None if run.baseline else versus_book_on_test(runs, run.optuna_trial)
        if versus is not None:
            parts.append(f"<p><b>trial {run.optuna_trial} vs the book's recipe</b>, paired seed by seed: "
                         f"{html.escape(versus.describe('seed'))}</p>")
    model = data.folder.path / MODEL_DIR / MODEL_FILE
    if model.is_file():
        parts.append(f"<p>The model it shipped: <code>{html.escape(str(model.parent))}</code> "
                     f"(<code>python -m study.predict {html.escape(str(data.folder.path))} PHOTOS</code>; "
                     f"<code>python -m study.export</code> writes it as ONNX or TorchScript).</p>")
    return "\n".join(parts)


def _classes_part(data: StudyData, number: int) -> str:
    """The ensemble's figures and its confusion matrix on the test split (``rerun_classes.parquet``), where the rerun wrote them."""
    from trainable.predict import balanced_accuracy

    from study.findings.ensemble import per_class_text

    table = data.rerun_classes
    if table is None:
        return ""
    mine = table[(table["optuna_trial"] == number) & (table["model"] == "ensemble")]
    if mine.empty:
        return ""
    classes = list(dict.fromkeys(mine["true_class"]))
    counts = mine.pivot(index="true_class", columns="predicted_class", values="images").reindex(index=classes, columns=classes).fillna(0)
    matrix = counts.to_numpy(dtype=int)
    accuracy = matrix.trace() / max(1, matrix.sum())
    per_class = per_class_text(matrix, classes, html.escape)
    rows = [[html.escape(c), *[str(n) for n in matrix[i]]] for i, c in enumerate(classes)]
    return (f"<p>the ensemble of its {int(mine['seeds'].iloc[0])} seed(s) (their class probabilities averaged): test accuracy "
            f"<b>{accuracy:.3f}</b>, balanced {balanced_accuracy(matrix):.3f}; per class {per_class}</p>"
            + html_table(["true \\ predicted", *[html.escape(c) for c in classes]], rows, {"true \\ predicted"}))


PHASE_NAMES = {"import_s": "import the training code (a new worker process)", "data_wait_s": "fetch the images",
               "restore_s": "read a checkpoint", "build_s": "make the model (or reset it)", "weights_s": "of which: read the weights",
               "to_device_s": "images to the device", "first_step_s": "the first step", "train_s": "an epoch's training",
               "val_s": "an epoch's validation", "checkpoint_s": "an epoch's checkpoint (on the training path)",
               "report_s": "an epoch's report (waiting for the study)"}


def _time_section(data: StudyData) -> str:
    """Where the trials' slot time went (``study.timing``), its parts and each phase's median."""
    from study.core.timing import time_use

    use = time_use(data.trials, data.epochs, data.settings.runs)
    if use is None:
        return ""
    parts = use.parts
    names = {"epochs": "epochs (training, validation)", "fixed": "the fixed cost of trials on a worker that had trained before",
             "first": "the first trial of each worker process, beyond its epochs (the process's start included)",
             "idle": "slots without a trial", "start": "slots waiting for their first trial", "between": "slots between trials",
             "end": "slots after their last trial"}
    rows = [[names[k], f"{v:.1f}", f"{100 * v / use.slot_s:.0f}%" if use.slot_s else "-"] for k, v in parts.items()]
    phases = [[PHASE_NAMES.get(k, k), f"{v:.4f}"] for k, v in use.phases.items()]
    epochs = ("" if use.later_epoch_s != use.later_epoch_s else
              f"<p>A first epoch took {use.first_epoch_s:.3f} s (median, workers that had trained before), a later one "
              f"{use.later_epoch_s:.3f} s.</p>")
    return (f"<h2>Where the time went</h2><p>{use.trials} trial(s) held {use.slot_s:.0f} slot-seconds (each driver run's trials' "
            f"stage times its slots); {_fmt_s(use.lost_per_trial)} a trial went elsewhere than its epochs.</p>"
            + html_table(["part", "slot-seconds", "share"], rows, {"part"}) + epochs
            + "<p class=\"muted\">Median seconds of each phase (a trial's start; an epoch's parts):</p>"
            + html_table(["phase", "seconds"], phases, {"phase"}))


def _fmt_s(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds:.2f} s"


def _confirmation_section(analysis: Analysis) -> str:
    conf = analysis.confirmation
    if conf is None:
        if analysis.data.settings.confirm:
            return '<h2>Confirmation stage</h2><p class="muted">Not run yet: it starts once every trial has finished.</p>'
        return ""
    rows = confirmation_rows(conf, baseline_number(analysis.data))
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in conf.lines)
    lines += f"<li>{html.escape(conf.cheapest)}</li>" if conf.cheapest else ""
    return (f"<h2>Confirmation stage</h2><p>The top configurations and the book's recipe (*) cross-validated on {conf.folds} "
            f"stratified folds of the train split: mean validation accuracy with its 95% t-interval, the training seconds a run "
            f"costs, whether the paired test can tell it from the winner, and whether it is on the front (no other configuration "
            f"both more accurate and cheaper).</p>"
            f"{html_table(CONFIRM_COLUMNS, rows, {'recommended', 'vs the winner'})}<ul>{lines}</ul>")


def build_html(analysis: Analysis, figures: dict, top: int = 10) -> str:
    import plotly.io as pio

    data, imp = analysis.data, analysis.importance
    s, base = data.settings, data.settings.base
    config = {"displaylogo": False, "responsive": True}
    first = [True]

    def plot(name: str) -> str:
        if name not in figures:
            return ""
        out = pio.to_html(figures[name], full_html=False, include_plotlyjs=first[0], config=config)  # plotly.js once, inline
        first[0] = False
        return out

    counts = ", ".join(f"{v} {html.escape(str(k))}" for k, v in data.trials["status"].value_counts().items())
    best = data.scored.head(1)
    best_text = ""
    if len(best):
        b, baseline = best.iloc[0], baseline_acc(data)
        best_text = f"single-validation best {b['best_val_acc']:.3f} (rank 1, trial {fmt(b['optuna_trial'])})"
        if baseline is not None:
            best_text += f"; the book's recipe (baseline, * in the table) {baseline:.3f}"
        if note := noise_note(float(b["best_val_acc"]), baseline, s.val_images, analysis.confirmation is not None):
            best_text += f". Note: {html.escape(note)}"
    answer = "".join(f"<li>{html.escape(line)}</li>" for line in answer_lines(analysis))
    from study.core.datacheck import describe_accepted

    warnings = "".join(f'<p class="note">{html.escape(line)}</p>' for line in [*describe_accepted(s), *analysis.range_warnings])
    disagreements = "".join(f'<p class="note">{html.escape(line)}</p>' for line in analysis.disagreements)
    columns, rows = top_table_rows(data, top)
    first_range = next(iter(analysis.ranges.values()), None)
    where = f"top {first_range.n_top} of {first_range.n_scored} trials lie in" if first_range else "top trials lie in"
    order = list(imp.values) if imp.values else data.params
    imp_rows = [[p, imp.describe(p), describe_range(analysis.ranges[p]), describe_check(analysis.checks.get(p)), describe_space(data, p)]
                for p in order]
    note = f'<p class="note">{html.escape(imp.note)}</p>' if imp.note else ""
    skipped = len(data.trials) - len(data.scored)
    skipped_text = f" ({skipped} trial(s) without a validation accuracy are left out)" if skipped else ""
    data_text = base.get("data_dir") or "the book's hotdog set"

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>study {html.escape(s.name)}</title>
<style>{CSS}</style></head><body>
<h1>Study {html.escape(s.name)}</h1>
<p class="muted">{html.escape(str(data_text))}; {html.escape(str(base.get('epochs')))} epoch(s) at {html.escape(str(base.get('image_size')))}px,
weights {html.escape(str(base.get('weights')))}, batch {html.escape(str(base.get('batch_size')))}, validation {html.escape(str(base.get('val_fraction')))} of train;
created {html.escape(s.created or '?')}; report written {dt.datetime.now():%Y-%m-%d %H:%M}.</p>
<h2>The answer</h2>
<ul>{answer}</ul>
{"".join(f'<p class="muted">{html.escape(line)}</p>' for line in describe_warm_start(s))}
{warnings}
<p class="muted">{len(data.trials)} trial(s) ({counts}); {best_text}.</p>

<h2>Top trials</h2>
{html_table(columns, rows, {"status", *[p for p in data.params if data.is_categorical(p)]})}

{_confirmation_section(analysis)}
{plot("cost")}

<h2>How much each hyperparameter matters</h2>
<p>{html.escape(imp.method)}: each hyperparameter's share in telling the best trials from the rest, the median and a 90% interval
over drawing the trials again (bootstrap); beside it, without a model, whether the top trials differ from the others in it (a
permutation test, p); and the range where the best trials lie.</p>
{note}{disagreements}
{html_table(["hyperparameter", "importance (90% interval)", where, "top vs the rest (p)", "searched"], imp_rows,
        {"hyperparameter", where, "top vs the rest (p)", "searched"})}
{plot("importance")}

<h2>Parallel coordinates</h2>
<p class="muted">One line per trial, coloured by its best validation accuracy{skipped_text}. Drag along an axis to select a range.</p>
{plot("parallel")}

<h2>Validation accuracy against each hyperparameter</h2>
{plot("params")}

<h2>Learning curves of the top trials</h2>
<p class="muted">Validation accuracy per epoch; grey: the other trials (short ones were stopped early by ASHA).</p>
{plot("curves")}

<h2>Final evaluation on the test split</h2>
{_rerun_section(data)}

{_time_section(data)}

<p class="muted">The same figures as PNG files: {", ".join(f"{FIGURES_DIR}/{n}" for n in PNG_NAMES + (("cost.png",) if "cost" in figures else ()))}.
Tables: trials.parquet, epochs.parquet; Optuna storage: optuna.db.</p>
</body></html>
"""


def write_report(analysis: Analysis, curves: int = 5, top: int = 10) -> tuple[Path, list[Path]]:
    """Write ``report.html`` and ``figures/*.png`` into the study folder; return their paths."""
    folder = analysis.data.folder.path
    pngs = write_pngs(analysis, folder / FIGURES_DIR, curves)
    page = build_html(analysis, plotly_figures(analysis, curves), top)
    path = folder / REPORT_FILE
    write_text_atomic(path, page)
    return path, pngs
