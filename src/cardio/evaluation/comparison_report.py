"""The model comparison report: Markdown and HTML with PNG figures, from comparison.json's dict.

Figures: ROC curves per group (every model; the champion's operating points marked), AUC with
95% CIs per model (forest plot), the champion's operating point against the study's 0.5, and
the fairness review (AUC per slice with CIs, flagged and too-small slices marked).
"""
from __future__ import annotations

import html
import os

import numpy as np

from cardio.evaluation import comparison as C, statistics as S

ROC_PNG = "roc_curves.png"
FOREST_PNG = "auc_forest.png"
OPERATING_PNG = "operating_point.png"
FAIRNESS_PNG = "fairness.png"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

STATUS_COLOURS = {"flagged": "#c0392b", "ok": "#2e86c1", "too small": "#b3b6b7", "site": "#1c2833"}


def _f(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(value, ci) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} ({_f(ci[0])}-{_f(ci[1])})"


def _p(value) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _group_title(comparison: dict, group: str) -> str:
    info = comparison["groups"][group]
    role = {C.VALIDATION: "chooses", C.EXTERNAL: "external: never chooses"}.get(group, "internal")
    return (f"{group} ({', '.join(info['sites'])}; {role})\n"
            f"n={info['n']}, {info['positives']} cardiomegaly")


def plot_roc(comparison: dict, path: str):
    plt = _pyplot()
    groups = list(comparison["groups"])
    champion = comparison["champion"]["model_name"]
    figure, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 5.2), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for name, model in sorted(comparison["models"].items()):
            summary = model["groups"].get(group, {})
            if "roc" not in summary:
                continue
            bold = name == champion
            ax.plot(summary["roc"]["fpr"], summary["roc"]["tpr"], lw=2.4 if bold else 1.2,
                    label=f"{name} {summary['auc']:.3f}" + (" (champion)" if bold else ""))
            if bold:
                for key, marker, text in (("operating", "o", "operating threshold"),
                                          ("study_0.5", "s", "0.5")):
                    point = summary[key]
                    if point["specificity"] is not None and point["sensitivity"] is not None:
                        ax.plot(1 - point["specificity"], point["sensitivity"], marker, ms=8,
                                mfc="none", mew=2, color="k",
                                label=f"champion at {text} ({point['threshold']:.2f})")
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity",
               ylabel="sensitivity", title=_group_title(comparison, group))
        ax.legend(loc="lower right", fontsize=7)
    figure.suptitle("ROC curves (legend: AUC)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_forest(comparison: dict, path: str):
    plt = _pyplot()
    names = sorted(comparison["models"])
    groups = list(comparison["groups"])
    figure, ax = plt.subplots(figsize=(7.5, 0.5 + 0.45 * len(names) * len(groups)))
    y, ticks, labels = 0, [], []
    for g_index, group in enumerate(groups):
        for name in names:
            s = comparison["models"][name]["groups"].get(group, {})
            if s.get("auc") is not None:
                ax.errorbar(s["auc"], y, xerr=[[max(0.0, s["auc"] - s["ci"][0])],
                                               [max(0.0, s["ci"][1] - s["auc"])]],
                            fmt="o", color=f"C{g_index}", capsize=3)
            ticks.append(y)
            labels.append(f"{name} | {group}")
            y -= 1
        y -= 0.5
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel(f"AUC ({S.DELONG_CI})")
    ax.set_title("AUC per model and group")
    ax.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_operating_point(comparison: dict, name: str, path: str):
    """Sensitivity and specificity (95% CIs) at the operating threshold and at 0.5, per group."""
    plt = _pyplot()
    model = comparison["models"][name]
    groups = list(model["groups"])
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    width = 0.38
    for ax, metric in zip(axes, ("sensitivity", "specificity")):
        for offset, (key, label) in enumerate((("operating", "operating threshold "
                                                f"{model['threshold']:.3f}"),
                                               ("study_0.5", "study threshold 0.5"))):
            values, low, high = [], [], []
            for group in groups:
                point = model["groups"][group][key]
                v = point[metric]
                lo, hi = point[f"{metric}_ci"]
                values.append(np.nan if v is None else v)
                low.append(0 if v is None else max(0.0, v - lo))   # float rounding at 0 and 1
                high.append(0 if v is None else max(0.0, hi - v))
            x = np.arange(len(groups)) + (offset - 0.5) * width
            ax.bar(x, values, width, yerr=[low, high], capsize=3, label=label,
                   color=("#2e86c1", "#aab7b8")[offset])
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.set_ylim(0, 1.05)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=8)
    figure.suptitle(f"{name}: operating point chosen on validation vs the study's 0.5 ({S.WILSON_CI})")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_fairness(rows: list, name: str, path: str):
    """AUC per slice with 95% CIs; colour = status; a dashed line at each site's AUC."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    height = 1.0 + 0.38 * len(rows)
    figure, ax = plt.subplots(figsize=(8, height))
    site_auc = {r["site"]: r["auc"] for r in rows if r["status"] == "site"}
    for i, row in enumerate(rows):
        y = -i
        colour = STATUS_COLOURS[row["status"]]
        if row["auc"] is None:
            ax.text(0.01, y, "AUC undefined (one class)", va="center", fontsize=7)
            continue
        ax.barh(y, row["auc"], color=colour, height=0.7,
                hatch="//" if row["status"] == "too small" else None, edgecolor="white")
        ax.errorbar(row["auc"], y, xerr=[[max(0.0, row["auc"] - row["ci"][0])],
                          [max(0.0, row["ci"][1] - row["auc"])]],
                    fmt="none", ecolor="k", capsize=2, lw=1)
        reference = site_auc.get(row["site"])
        if reference is not None and row["status"] != "site":
            ax.plot([reference, reference], [y - 0.4, y + 0.4], "--", color="k", lw=1)
    ax.set_yticks([-i for i in range(len(rows))],
                  [f"{r['slice']} (n={r['n']}, {r['positives']}+)" for r in rows], fontsize=8)
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel(f"AUC ({S.DELONG_CI}; dashed: the site's AUC; dotted: chance)")
    ax.set_title(f"{name}: AUC per slice (test and external splits)")
    figure.legend(handles=[Patch(color=c, label=s) for s, c in STATUS_COLOURS.items()],
                  loc="lower center", ncol=4, fontsize=7)
    figure.tight_layout(rect=(0, 0.35 / height, 1, 1))
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _models_table(comparison: dict, group: str) -> list:
    champion = comparison["champion"]["model_name"]
    lines = [f"| model | AUC ({S.DELONG_CI}) | sensitivity | specificity | accuracy | precision | F1 | "
             "blessed |", "|---|---|---|---|---|---|---|---|"]
    for name, model in sorted(comparison["models"].items()):
        s = model["groups"].get(group)
        if s is None:
            continue
        mark = ""
        if champion and name != champion:
            row = next((r for r in comparison["delong"] if r["group"] == group and
                        {r["model_a"], r["model_b"]} == {name, champion}), None)
            if row and row["p"] < C.ALPHA:
                mark = " *" + ("†" if row["p_holm"] < C.ALPHA else "")
        op = s["operating"]
        title = f"**{name}** (champion)" if name == champion else name
        lines.append(f"| {title} | {_ci(s['auc'], s['ci'])}{mark} | {_f(op['sensitivity'])} | "
                     f"{_f(op['specificity'])} | {_f(op['accuracy'])} | {_f(op['precision'])} | "
                     f"{_f(op['f1'])} | {'yes' if model.get('blessed') else 'no'} |")
    return lines


def plot_reliability(comparison: dict, name: str, path: str):
    """Reliability diagram of one model: observed frequency against mean served probability per
    bin, one line per group (site slice), the diagonal for perfect calibration."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="#aab7b8", linestyle="--", label="perfectly calibrated")
    for group, s in comparison["models"][name]["groups"].items():
        rows = s.get("calibration", {}).get("reliability", [])
        if rows:
            ax.plot([r["mean_probability"] for r in rows], [r["observed"] for r in rows],
                    marker="o", label=f"{group} (ECE {s['calibration']['ece']:.3f})")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_xlabel("mean served (calibrated) probability"), ax.set_ylabel("observed frequency")
    ax.set_title(f"{name}: reliability")
    ax.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _calibration_table(comparison: dict) -> list:
    lines = ["| model | group | n | ECE | Brier |", "|---|---|---|---|---|"]
    for name, model in sorted(comparison["models"].items()):
        for group, s in model["groups"].items():
            c = s.get("calibration")
            if c:
                lines.append(f"| {name} | {group} | {c['n']} | {_f(c['ece'])} | {_f(c['brier'])} |")
    return lines


def _delong_table(comparison: dict) -> list:
    if not comparison["delong"]:
        return ["Only one model was trained: there is no pair to compare."]
    lines = ["| group | model A | model B | pair | AUC A | AUC B | z (B-A) | p | p (Holm) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in comparison["delong"]:
        star = " *" if r["p"] < C.ALPHA else ""
        lines.append(f"| {r['group']} | {r['model_a']} | {r['model_b']} | {r['kind']} | "
                     f"{r['auc_a']:.3f} | {r['auc_b']:.3f} | {r['z']:.2f} | {_p(r['p'])}{star} | "
                     f"{_p(r['p_holm'])} |")
    return lines


def _operating_table(comparison: dict, model: dict) -> list:
    prevalence = comparison["settings"]["deployment_prevalence"]
    lines = [f"| group | threshold | sensitivity ({S.WILSON_CI}) | specificity ({S.WILSON_CI}) | "
             f"PPV at {prevalence:.0%} | NPV at {prevalence:.0%} | precision here |",
             "|---|---|---|---|---|---|---|"]
    for group, s in model["groups"].items():
        for key in ("operating", "study_0.5"):
            m = s[key]
            label = f"{m['threshold']:.3f}" + (" (operating)" if key == "operating" else " (study)")
            lines.append(f"| {group} | {label} | {_ci(m['sensitivity'], m['sensitivity_ci'])} | "
                         f"{_ci(m['specificity'], m['specificity_ci'])} | "
                         f"{_f(m['deployment']['ppv'])} | {_f(m['deployment']['npv'])} | "
                         f"{_f(m['precision'])} |")
    return lines


def _fairness_table(rows: list) -> list:
    lines = [f"| slice | n (cardiomegaly) | AUC ({S.DELONG_CI}) | sensitivity ({S.WILSON_CI}) | "
             f"specificity ({S.WILSON_CI}) | complement AUC | p | p (Holm) | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = {"flagged": "**FLAGGED**: AUC below the rest of the site",
                  "site": "site (reference)"}.get(r["status"], r["status"])
        if r.get("note"):
            status += f": {r['note']}"
        lines.append(f"| {r['slice']} | {r['n']} ({r['positives']}) | {_ci(r['auc'], r['ci'])} | "
                     f"{_ci(r['sensitivity'], r['sensitivity_ci'])} | "
                     f"{_ci(r['specificity'], r['specificity_ci'])} | "
                     f"{_f(r.get('complement_auc'))} | {_p(r.get('p'))} | {_p(r.get('p_holm'))} | "
                     f"{status} |")
    return lines


def _ctr_section(comparison: dict) -> list:
    """The served cardiothoracic ratio as a score beside the champion, and its agreement with
    the ground-truth ratio where the examples carry one."""
    ctr = comparison.get("ctr")
    lines = ["## Cardiothoracic ratio beside the champion", ""]
    if not ctr:
        return lines + ["Not served: the exports have no heart U-Net beside the lung U-Net, so "
                        "no `ctr` was measured.", ""]
    card = ctr.get("segmenter") or {}
    held = card.get("held_out") or {}
    champion = comparison["champion"]["model_name"]
    lines += ["`ctr` is what serving returns beside the probability: the heart's maximal "
              "horizontal width over the lung fields' (heart and lung U-Nets, "
              "cardio.imaging.ctr), measured on the uncropped radiograph as a client sends it; "
              "`ctr > 0.5` is the clinical rule on a PA film. Not measured: a mask was empty "
              "(`ctr` = -1). DeLong's paired test compares its AUC with the champion's "
              f"({champion or 'none chosen'}) on the same images; z > 0 when the champion "
              "ranks better. It reports only: nothing is chosen on it.", ""]
    if card:
        lines += [f"Heart U-Net `{str(card.get('weights_sha256', ''))[:12]}`: held-out Dice "
                  f"{_f(held.get('dice'))} (n={held.get('n', '-')}); trained on "
                  f"{card.get('training_data', 'unknown data')}. On a site whose radiographs "
                  "trained it, the CTR's figures are not an independent test of it.", ""]
    lines += [f"| group | n measured (not) | cardiomegaly | CTR AUC ({S.DELONG_CI}) | "
              f"`ctr > 0.5` sensitivity ({S.WILSON_CI}) | specificity ({S.WILSON_CI}) | "
              "champion AUC, same images | z | p | agreement with ground-truth CTR "
              "(n, MAE, bias, r) |", "|---" * 10 + "|"]
    for group, row in ctr["groups"].items():
        above, versus = row.get("above_0.5") or {}, row.get("vs_champion") or {}
        agree = row.get("agreement")
        lines.append(
            f"| {group} | {row['n']} ({row['not_measured']}) | {row['positives']} | "
            f"{_ci(row.get('auc'), row.get('ci', [None, None]))} | "
            f"{_ci(above.get('sensitivity'), above.get('sensitivity_ci', [None, None]))} | "
            f"{_ci(above.get('specificity'), above.get('specificity_ci', [None, None]))} | "
            f"{_f(versus.get('auc_b'))} | {_f(versus.get('z'), 2)} | {_p(versus.get('p'))} | "
            + (f"{agree['n']}, {agree['mae']:.3f}, {agree['bias']:+.3f}, {agree['pearson_r']:.2f}"
               if agree else "no ground truth in the examples") + " |")
    return lines + [""]


def markdown(comparison: dict, figures: dict, overlays: dict | None, overlay_note: str | None) -> str:
    champion = comparison["champion"]
    settings = comparison["settings"]
    groups = comparison["groups"]
    lines = ["# Model comparison", "",
             f"{len(comparison['models'])} model(s) scored on "
             + ", ".join(f"**{g}** ({', '.join(i['sites'])}: {i['n']} images, {i['positives']} "
                         f"cardiomegaly)" for g, i in groups.items()) + ".",
             "",
             *[f"**Few cases**: {g} has {i['positives']} cardiomegaly and "
               f"{i['n'] - i['positives']} normal images; its AUC CIs (normal approximation) and "
               "tests are unreliable and models are hard to tell apart there." + "\n"
               for g, i in groups.items()
               if min(i["positives"], i["n"] - i["positives"]) < settings["fairness_min_per_class"]],
             "The champion is chosen on validation only; ties are broken by a rule fixed "
             f"beforehand ({C.TIE_RULE}); the internal test split reports only. "
             + (f"The external site ({settings['external_site']}) gates and reports but never "
                "chooses." if settings["external_site"] else
                "No external site is configured: no figure here says how the models generalise "
                "to another hospital, and the gate judged internal data only."), "",
             "## Champion", ""]
    if champion["model_name"]:
        model = comparison["models"][champion["model_name"]]
        pushed = model.get("pushed") or {}
        lines += [f"**{champion['model_name']}**: {champion['reason']}", ""]
        if pushed.get("pushed"):
            lines += [f"Pushed as version {pushed.get('version')} to `{pushed.get('destination')}`.", ""]
    else:
        lines += [f"**No champion.** {champion['reason']}", ""]

    lines += ["## ROC curves", "", f"![ROC curves per group]({figures['roc']})", "",
              f"![AUC ({S.DELONG_CI})]({figures['forest']})", "",
              "## Metrics per model and group", "",
              "At each model's operating threshold (chosen on validation). AUC CIs are DeLong's; "
              f"`*` marks DeLong p < {C.ALPHA} against the champion on that group, `†` that it "
              "survives Holm's correction over all pairs of the group.", ""]
    for group in groups:
        if group == C.VALIDATION:
            continue
        lines += [f"### {group} ({', '.join(groups[group]['sites'])})", ""]
        lines += _models_table(comparison, group) + [""]
    lines += [f"### {C.VALIDATION} (chooses the champion)", ""]
    lines += _models_table(comparison, C.VALIDATION) + [""]

    lines += ["## Calibration", "",
              "The served probability is Platt-scaled on validation by the Trainer. Expected "
              "calibration error (10 equal-width bins) and Brier score per group; the reliability "
              "diagrams plot observed frequency against the mean probability per bin. A class-"
              "balanced test split has a higher prevalence than validation, so its calibration "
              "is not the deployment's.", ""]
    lines += _calibration_table(comparison) + [""]
    lines += [f"![reliability of {name}]({path})"
              for name, path in sorted(figures.get("reliability", {}).items())] + [""]

    lines += ["## DeLong tests, every pair", "",
              "Two-sided DeLong tests of equal AUC on the same images (MLstatkit); `pair` says "
              "whether the models differ in class weighting (one backbone), backbone (one "
              "weighting) or both. p (Holm) is adjusted over the pairs of a group.", ""]
    lines += _delong_table(comparison) + [""]

    lines += _ctr_section(comparison)
    sites = comparison.get("sites")
    if sites:
        lines += ["## The sites before and after the crop", "",
                  f"t-SNE of {sites['images']} radiographs coloured by site (the crop stage's "
                  "report). Site separability: the cross-validated AUC of a logistic regression "
                  "telling the sites apart from 32x32 thumbnails (0.5: they look alike): "
                  f"{sites['site_auc_raw']:.3f} before the crop, {sites['site_auc_cropped']:.3f} "
                  "after. A site a thumbnail can tell apart differs in acquisition as well as in "
                  "patients; the external AUC is measured across that difference.", "",
                  f"![t-SNE by site, before and after the crop]({sites['plot']})", ""]

    prevalence = settings["deployment_prevalence"]
    lines += ["## Operating point", "",
              "Each model labels an image positive when its probability reaches the threshold "
              "the Trainer chose on validation (baked into the export) for the target "
              "sensitivity; the study's 0.5 is shown beside it. The test split has the source's "
              "prevalence, not a ward's, so its precision says little there: PPV and NPV are "
              f"given at a deployment prevalence of {prevalence:.0%} (configurable, "
              "`deployment_prevalence`), as point estimates from the sensitivity and specificity "
              "beside them (Bayes' rule).", ""]
    for name, model in sorted(comparison["models"].items()):
        target = model.get("target_sensitivity")
        lines += [f"### {name}", "",
                  f"Operating threshold {model['threshold']:.4f}" +
                  (f" (validation sensitivity >= {target})" if target is not None else "") + ".", ""]
        if name == champion["model_name"] and figures.get("operating"):
            lines += [f"![Operating point]({figures['operating']})", ""]
        lines += _operating_table(comparison, model) + [""]

    lines += ["## Fairness review", "",
              "Per slice of the test and external splits, at the operating threshold. Within "
              "each site, every sex, age band and view is compared with the rest of that site "
              "(DeLong for independent groups, two-sided, Holm-adjusted across the tested "
              f"slices); **flagged** when the adjusted p < {settings['alpha']} and the slice's "
              "AUC is the lower. Slices or complements with fewer than "
              f"{settings['fairness_min_per_class']} cardiomegaly or normal images are too "
              "small to judge and are not tested.", ""]
    order = ([champion["model_name"]] if champion["model_name"] else []) + sorted(
        n for n in comparison["models"] if n != champion["model_name"])
    for name in order:
        rows = comparison["models"][name]["fairness"]
        flagged = [r["slice"] for r in rows if r["status"] == "flagged"]
        small = sum(r["status"] == "too small" for r in rows)
        lines += [f"### {name}" + (" (champion)" if name == champion["model_name"] else ""), "",
                  f"Flagged: {', '.join(flagged) if flagged else 'none'}; "
                  f"{small} slice(s) too small to judge.", ""]
        if figures.get("fairness", {}).get(name):
            lines += [f"![Fairness review of {name}]({figures['fairness'][name]})", ""]
        lines += _fairness_table(rows) + [""]

    lines += ["## Explanations: Grad-CAM and guided backprop", ""]
    if overlay_note:
        lines += [overlay_note, ""]
    for name, paths in (overlays or {}).items():
        lines += [f"### {name}", ""] + [f"![{os.path.basename(p)}]({p})" for p in paths] + [""]
    lines += ["", "Per-image predictions of every model are in `predictions.csv`; the ROC, AUC, "
              "operating-point and fairness figures are drawn from `comparison.json`.", ""]
    return "\n".join(lines)


def write(comparison: dict, out_dir: str, overlays: dict | None = None,
          overlay_note: str | None = None) -> dict:
    """Writes the figures, report.md and report.html into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    figures = {"roc": ROC_PNG, "forest": FOREST_PNG, "fairness": {}}
    plot_roc(comparison, os.path.join(out_dir, ROC_PNG))
    plot_forest(comparison, os.path.join(out_dir, FOREST_PNG))
    champion = comparison["champion"]["model_name"]
    if champion:
        figures["operating"] = OPERATING_PNG
        plot_operating_point(comparison, champion, os.path.join(out_dir, OPERATING_PNG))
    figures["reliability"] = {}
    for name, model in comparison["models"].items():
        figures["reliability"][name] = f"reliability_{name}.png"
        plot_reliability(comparison, name, os.path.join(out_dir, figures["reliability"][name]))
        figures["fairness"][name] = f"fairness_{name}.png"
        plot_fairness(model["fairness"], name, os.path.join(out_dir, figures["fairness"][name]))
    text = markdown(comparison, figures, overlays, overlay_note)
    with open(os.path.join(out_dir, REPORT_MD), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, REPORT_HTML), "w") as f:
        f.write(to_html(text))
    return {"markdown": os.path.join(out_dir, REPORT_MD), "html": os.path.join(out_dir, REPORT_HTML),
            "roc": os.path.join(out_dir, ROC_PNG)}


def to_html(text: str) -> str:
    import markdown as md  # Python-Markdown (a TensorBoard dependency)

    body = md.markdown(text, extensions=["tables"])
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px}th{background:#f4f6f6}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>"
            f"{html.escape('Model comparison')}</title><style>{style}</style></head>"
            f"<body>{body}</body></html>")
