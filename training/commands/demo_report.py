"""The demo's report (`entropy-asr demo` writes it to reports/demo/): summary.json, README.md with a table per
recipe and stage, the encoder scores before and after joint training (also as a plot), the IA-SFT CKA curve, the
targets met or missed and what the numbers say about the paper's claims; and the rule that picks a recipe's best
stage."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.runners.keys import decoder_text, figure_text
from training.config import NoSpeechConfig


@dataclass(frozen=True)
class Target:
    """A figure the best entropy-aware stage should reach (configs/demo.yaml `targets`): `key` of its summary at
    most `bound`."""

    key: str
    bound: float
    text: str


def _before_joint(entry: dict[str, Any]) -> dict[str, Any]:
    """A recipe's encoder scores before joint training: the align stage's ({} without an align stage), measured on
    the same utterances as every other stage's."""
    return entry["stages"].get("align", {})


def write_report(
    summary: dict[str, Any],
    outputs: dict[str, list[Path]],
    reports: Path,
    goals: Sequence[Target],
    greedy: dict[str, Any],
) -> None:
    """summary.json and README.md with the per-stage tables, the Figure-1-style plot and the CKA curve;
    `goals`: the targets the best entropy-aware stage is checked against; `greedy`: the second column's decoding
    options."""
    import matplotlib  # lazy: only when a report is written, with its backend chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: see above

    reports.mkdir(parents=True, exist_ok=True)
    recipes = summary["recipes"]
    summary["decoder"] = {  # every stage's headline figures; greedy is the second column
        **recipes["entropy-aware"].get("decoder", {}),
        "second_column": "greedy",
        "second_column_options": greedy,
    }
    (reports / "summary.json").write_text(json.dumps(summary, indent=2))

    # Figure 1 style: encoder scores before joint training (after align) vs the final model, both recipes, on
    # the final stages' utterances
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, key in zip(axes, ("nse", "pai", "csai")):
        labels, before, after = [], [], []
        for name, entry in recipes.items():
            stages = entry["stages"]
            labels.append(name)
            before.append(_before_joint(entry).get(key) or 0.0)
            after.append(stages[entry["final_stage"]].get(key) or 0.0)
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], before, 0.4, label="before joint (align)")
        ax.bar([i + 0.2 for i in x], after, 0.4, label="final")
        ax.set_xticks(list(x), labels)
        ax.set_title(key.upper())
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(reports / "entropy_allocation.png", dpi=120)
    plt.close(fig)
    cka_png = None
    for stage in outputs.get("entropy-aware", []):
        if (stage / "hot_swap_cka.png").is_file():
            cka_png = reports / "ia_sft_cka.png"
            shutil.copy2(stage / "hot_swap_cka.png", cka_png)

    gate = NoSpeechConfig()  # the recipes calibrate with the defaults

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    def num(v):
        return "n/a" if v is None else f"{v:.3f}"

    # an error rate (or proportion) in percent with its 95% interval where the summary has one
    def rate(s, key):
        ci = s.get(f"{key}_ci95")
        return pct(s.get(key)) + (
            "" if s.get(key) is None or not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
        )

    def enc(s, key):  # an encoder score with its 95% interval (or the early-stopping flag of a CSAI)
        text = figure_text(s.get(key), s.get(f"{key}_ci95"), s.get(f"{key}_stopped_at_start"))
        return "n/a" if text is None else text

    def per(s):  # the phoneme CTC head's error (none for a character head or an old report)
        en, zh = s.get("per_en"), s.get("per_zh")
        return "n/a" if en is None and zh is None else f"{rate(s, 'per_en')} / {rate(s, 'per_zh')}"

    def names(s):  # B-WER / B-CER: the words (characters) of the names each test row records
        en, zh = s.get("bwer_en"), s.get("bcer_zh")
        return "n/a" if en is None and zh is None else f"{rate(s, 'bwer_en')} / {rate(s, 'bcer_zh')}"

    lines = [
        "# entropy-asr demo report",
        "",
        "Built by `make demo` on the built-in corpus; rates in percent.",
        "",
    ]
    for name, entry in recipes.items():
        lines += [
            f"## {name}",
            "",
            "| stage | WER en | CER zh | greedy: WER en / CER zh | on names en / zh | PER en / zh | halluc. rule | "
            "halluc. probes | NSE | PAI | CSAI | CKA to stage 1 | RTF | no-speech gate | speech-confidence gate |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for stage, s in entry["stages"].items():
            g = s.get("greedy") or {}
            lines.append(
                f"| {stage} | {rate(s, 'wer_en')} | {rate(s, 'cer_zh')} | {pct(g.get('wer_en'))} / "
                f"{pct(g.get('cer_zh'))} | {names(s)} | {per(s)} | "
                f"{rate(s, 'hallucination_rule')} | "
                f"{rate(s, 'hallucination_probe')} | {enc(s, 'nse')} | {enc(s, 'pai')} | {enc(s, 'csai')} | "
                f"{enc(s, 'cka_to_pretrained')} | {num(s['rtf'])} | {num(s.get('no_speech_threshold'))} | "
                f"{num(s.get('min_speech_confidence'))} |"
            )
        lines += [
            "",
            f"No-speech gate: each stage that writes transcripts calibrated `no_speech_threshold` on {gate.samples} "
            f"dev clips ({1 + gate.margin:g} x the highest probability of ending the turn at once on speech, at least "
            f"{gate.floor:g}); its model answers a clip with nothing when that probability reaches the threshold. "
            + (
                f"The speech-confidence gate (`min_speech_confidence`, {1 - gate.confidence_margin:g} x the lowest "
                "speech confidence on the same clips: the mean probability of the phoneme-CTC head's best label "
                "where it is not blank) answers with nothing when the encoder's posteriors are flatter than that. "
                if gate.confidence_margin is not None
                else ""
            )
            + "The rates above are with the gates. Every stage decodes with the decoder it ships with (its saved "
            "decoding options: "
            + decoder_text(summary.get("decoder") or {})
            + "); greedy: the LLM's greedy decoding alone (`ctc_weight=0`), on the same clips. In brackets: 95% "
            "bootstrap intervals over the test utterances (PAI, CSAI: over the probes' held-out utterances, the "
            "probes trained once). CSAI: what the encoder tells about the word (character) beyond how it sounds; "
            "'stopped at start': no gain found, 0 by construction. On names: WER (CER) on the words (characters) of the entity names "
            "each test utterance records (B-WER / B-CER; the test names never occur in training). PER: greedy "
            "phoneme error of the phoneme CTC head (what the encoder hears, before the LLM; n/a for a character "
            "head).",
            "",
        ]
    ps = summary.get("pocketsphinx", {})
    line = f"pocketsphinx on {ps.get('n_clips', 0)} English test clips: WER {pct(ps.get('wer_en'))}"
    if ps.get("skipped"):
        line = f"pocketsphinx baseline not run: {ps['skipped']}"
    if ps.get("entropy_aware_wer_en") is not None:
        line += f"; the entropy-aware `{ps['entropy_aware_stage']}` on the same clips: {pct(ps['entropy_aware_wer_en'])}"
    lines += [line + ".", ""]
    lines += transfer_lines(recipes, rate)
    lines += [
        "Encoder before and after joint training: the align and final rows of the tables above (every stage's encoder "
        "is scored on the same test utterances, the final stages', whatever subset its transcripts are scored on):",
        "",
        "| recipe | NSE before | NSE final | PAI before | PAI final | CSAI before | CSAI final | frame-phoneme CSAI "
        "before | frame-phoneme CSAI final |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in recipes.items():
        b = _before_joint(entry)
        f = entry["stages"][entry["final_stage"]]
        cells = [f"{enc(b, k)} | {enc(f, k)}" for k in ("nse", "pai", "csai", "csai_frame")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "![entropy allocation](entropy_allocation.png)", ""]
    if cka_png:
        lines += [
            "IA-SFT: CKA of each pretraining snapshot to the encoder in use, hot-swaps marked:",
            "",
            "![CKA](ia_sft_cka.png)",
            "",
        ]
    lines += ["## Targets (entropy-aware, best stage)", "", *targets(summary, goals), ""]
    lines += ["## What the numbers say", "", *claims(summary), ""]
    (reports / "README.md").write_text("\n".join(lines))


# the figure each transfer split is read by: (split, what it holds, its error rate, on its names)
TRANSFER_FIGURES = (
    ("test_codeswitch", "code-switched requests", "mer_mixed", "bmer_mixed"),
    ("test_unseen_engine", "English said by flite (unseen engine)", "wer_en", "bwer_en"),
)


def transfer_lines(recipes: dict[str, Any], rate: Callable[[dict, str], str]) -> list[str]:
    """The report's section on speech the recipes were not tuned on (each recipe's chosen stage on the corpus's
    code-switched and unseen-engine test splits); none when no recipe was scored on them."""
    rows = []
    for recipe, entry in recipes.items():
        for split, what, key, names in TRANSFER_FIGURES:
            s = (entry.get("transfer") or {}).get(split)
            if s is None:
                continue
            rows.append(
                f"| {recipe} | `{s.get('name')}` | {what} | {s.get('n_utterances', 'n/a')} | {rate(s, key)} | "
                f"{rate(s.get('greedy') or {}, key)} | {rate(s, names)} |"
            )
    if not rows:
        return []
    return [
        "## Speech the recipes were not tuned on",
        "",
        "| recipe | stage | clips | n | error (MER / WER) | greedy | on names |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Code-switched: Mandarin requests with English names and English requests with Mandarin names, each "
        "language said by its own voice, scored by mixed error rate (Hanzi and English words); the training split "
        "holds a few such requests with other names and voices. Unseen engine: English test requests said by "
        "flite, a synthesizer no training clip comes from; the step from the test split's English WER to this "
        "one is the part of the accuracy that holds only for espeak-ng's way of speaking. One other synthesizer "
        "is still synthetic speech: neither figure says how the model does on people.",
        "",
    ]


def targets(summary: dict[str, Any], goals: Sequence[Target]) -> list[str]:
    """One line per target: the entropy-aware recipe's best stage (lowest mean error rate) against it."""
    entry = summary["recipes"]["entropy-aware"]
    name, best, rescored = chosen_stage(entry)
    if name is None:
        return ["- no stage produced transcripts."]
    out = [f"Best stage: `{name}`."]
    if rescored:
        out = [
            f"Best stage: `{name}` (chosen on the per-stage subset, and better than the final stage on the "
            "utterances of the final stages; the figures below are its scores on those)."
        ]
    elif entry.get("best_stage", {}).get("name") not in (None, name):
        out = [
            f"Best stage: `{name}` (`{entry['best_stage']['name']}`, the best on the per-stage subset, did not do "
            "better on the utterances of the final stages)."
        ]
    for key, bound, text in ((g.key, g.bound, g.text) for g in goals):
        value = best.get(key)
        if value is None:
            out.append(f"- {text}: not measured (target <= {100 * bound:.1f}%).")
        elif value <= bound:
            out.append(
                f"- {text}: {100 * value:.2f}%{_interval(best, key)} (target <= {100 * bound:.1f}%): "
                f"met{_by_names(best, key)}."
            )
        else:
            out.append(
                f"- {text}: {100 * value:.2f}%{_interval(best, key)} (target <= {100 * bound:.1f}%): MISSED by "
                f"{100 * (value - bound):.2f} points{_by_names(best, key)}."
            )
    ps = summary.get("pocketsphinx", {})
    mine = ps.get("entropy_aware_wer_en", best.get("wer_en"))
    if ps.get("wer_en") is not None and mine is not None:
        verdict = "met" if mine < ps["wer_en"] else "MISSED"
        clips = f" on the same {ps['n_clips']} English clips" if "entropy_aware_wer_en" in ps else ""
        out.append(
            f"- lower English WER than pocketsphinx{clips}: {100 * mine:.2f}% vs {100 * ps['wer_en']:.2f}%: "
            f"{verdict}."
        )
    elif ps.get("skipped"):
        out.append(f"- lower English WER than pocketsphinx: not measured ({ps['skipped']}).")
    if entry.get("hotwords"):
        out.append(hotword_line(entry["hotwords"], goals))
    greedy = best.get("greedy") or {}
    if greedy:
        rule = greedy.get("hallucination_rule")
        out.append(
            "- the same stage with the LLM's greedy decoding alone (`ctc_weight=0`, the second column): "
            + ", ".join(_verdicts(greedy, goals))
            + f"; test utterances hallucinated by the paper's rule {'n/a' if rule is None else f'{100 * rule:.2f}%'}."
        )
    return out


def _interval(scores: dict[str, Any], key: str) -> str:
    """ " (95% interval 0.90-2.60%)" when the scores carry the bootstrap interval of `key`."""
    ci = scores.get(f"{key}_ci95")
    return "" if not ci else f" (95% interval {100 * ci[0]:.2f}-{100 * ci[1]:.2f}%)"


def _verdicts(scores: dict[str, Any], goals: Sequence[Target]) -> list[str]:
    """ "English WER 9.50% (met; on the names' words ...)" for the two error-rate targets."""
    rates = []
    for key, bound, text in ((g.key, g.bound, g.text) for g in goals[:2]):
        value = scores.get(key)
        verdict = (
            "not measured"
            if value is None
            else "met"
            if value <= bound
            else f"MISSED by {100 * (value - bound):.2f} points"
        )
        shown = "n/a" if value is None else f"{100 * value:.2f}%"
        rates.append(f"{text} {shown} ({verdict}{_by_names(scores, key)})")
    return rates


NAME_SPLIT = {"wer_en": ("bwer_en", "uwer_en", "words"), "cer_zh": ("bcer_zh", "ucer_zh", "characters")}


def _by_names(scores: dict[str, Any], key: str) -> str:
    """ "; on the names' words 95.0%, on the other words 14.0%" for an error-rate key with its B-/U- split."""
    biased, unbiased, unit = NAME_SPLIT.get(key, (None, None, ""))
    b, u = scores.get(biased), scores.get(unbiased)
    if b is None or u is None:
        return ""
    return f"; on the names' {unit} {100 * b:.2f}%, on the other {unit} {100 * u:.2f}%"


def hotword_line(hw: dict[str, Any], goals: Sequence[Target]) -> str:
    """The error-rate targets again with hotword retrieval (`evaluate_recipe`'s "hotwords" entry)."""

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    rates = _verdicts(hw, goals)
    edits = hw.get("max_hotword_edits", 0)
    per_edit = hw.get("phonemes_per_edit")
    return (
        f"- with the companion paper's hotword retrieval (`{hw['name']}`; the corpus's {hw['list_size']} entity names "
        f"as the list, looked up in each test clip's phoneme hypothesis"
        + (f" with up to {edits} phoneme edit{'s' if edits != 1 else ''}" if edits else "")
        + (f", one per {per_edit} phonemes of a name" if edits and per_edit else "")
        + f"; the names found bias decoding with bonus {hw.get('hotword_bonus', 0):g}"
        + ("" if hw.get("prompt_hotwords", True) else " and stay out of the prompt")
        + f"): {', '.join(rates)}; retrieval recall {pct(hw.get('recall'))}, precision {pct(hw.get('precision'))}, "
        f"{hw.get('hotwords_per_utterance') or 0:.2f} names per utterance; test utterances hallucinated by the "
        f"paper's rule {pct(hw.get('hallucination_rule'))}."
    )


# The paper's claims the demo checks: (summary key, whether lower is better, the claim)
CLAIMS: tuple[tuple[str, bool, str], ...] = (
    ("wer_en", True, "Lower English error rate at equal compute"),
    ("cer_zh", True, "Lower Mandarin error rate at equal compute"),
    ("hallucination_probe", True, "Fewer hallucinations on silence and noise"),
    ("csai", True, "Less semantic anchoring in the encoder (lower CSAI: beyond how the word sounds)"),
    ("csai_frame", True, "The same with the frame-phoneme CSAI (phonetic context counts as semantic)"),
    ("cka_to_pretrained", False, "Less encoder drift from its pretrained state (higher CKA)"),
)
# what `verdict_kind` can say of a claim in one run
VERDICT_KINDS = ("supported", "not separated", "contradicted", "direction only", "not measurable")


def _final_stages(summary: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    ea, cv = (summary["recipes"][k] for k in ("entropy-aware", "conventional"))
    return ea["stages"][ea["final_stage"]], cv["stages"][cv["final_stage"]]


def claims(summary: dict[str, Any]) -> list[str]:
    """One sentence per claim of the paper (`CLAIMS`), stating whether these numbers support it."""
    fa, fc = _final_stages(summary)
    out = []
    for key, lower_is_better, text in CLAIMS:
        if fa.get(key) is None or fc.get(key) is None:
            out.append(f"- {text}: not measurable here ({key} missing).")
            continue
        out.append(
            f"- {text}: entropy-aware {_shown(fa, key)} vs conventional {_shown(fc, key)}: "
            f"{_verdict(fa, fc, key, lower_is_better)}."
        )
    out.append(
        "- Scale caveat: a ~7M-parameter model trained for minutes on synthetic speech; the paper's claims are about 2.3B models on real data."
    )
    return out


def _shown(scores: dict[str, Any], key: str) -> str:
    """A claim's figure: an error rate in percent, an encoder score in its units, with the 95% interval."""
    value, ci = scores[key], scores.get(f"{key}_ci95")
    if key in NAME_SPLIT or key.startswith(("wer", "cer", "mer", "hallucination")):
        return f"{100 * value:.2f}%" + ("" if not ci else f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]")
    return figure_text(value, ci, scores.get(f"{key}_stopped_at_start"))


def verdict_kind(ours: dict[str, Any], theirs: dict[str, Any], key: str, lower_is_better: bool) -> str:
    """One of `VERDICT_KINDS`: "supported" only when the 95% intervals of the two figures do not overlap and ours
    is on the better side, "contradicted" when they do not overlap the other way, "not separated" when they
    overlap, "direction only" for figures without intervals, "not measurable" when one is missing."""
    a, c = ours.get(key), theirs.get(key)
    if a is None or c is None:
        return "not measurable"
    ia, ic = ours.get(f"{key}_ci95"), theirs.get(f"{key}_ci95")
    if not ia or not ic:
        return "direction only"
    if ia[1] < ic[0] or ic[1] < ia[0]:
        return "supported" if (a < c if lower_is_better else a > c) else "contradicted"
    return "not separated"


def _verdict(ours: dict[str, Any], theirs: dict[str, Any], key: str, lower_is_better: bool) -> str:
    """`verdict_kind` as a sentence."""
    better = ours[key] < theirs[key] if lower_is_better else ours[key] > theirs[key]
    kind = verdict_kind(ours, theirs, key, lower_is_better)
    if kind == "direction only":
        return f"{'supported' if better else 'not supported'} by this run (no interval: the difference may be noise)"
    if kind in ("supported", "contradicted"):
        return f"{kind} by this run (the 95% intervals do not overlap)"
    return f"not separated (the 95% intervals overlap; the point estimates {'favour' if better else 'do not favour'} the claim)"


def seeds_report(summaries: dict[int, dict[str, Any]], goals: Sequence[Target]) -> tuple[list[str], dict]:
    """The comparison over several seeds (`entropy-asr demo --seeds`): README lines and a summary with, per seed,
    the entropy-aware recipe's best stage and its targets, and per claim how many seeds each verdict got."""
    seeds = sorted(summaries)
    per_seed, counts = {}, {}
    for seed in seeds:
        name, best, _ = chosen_stage(summaries[seed]["recipes"]["entropy-aware"])
        met = {g.key: (best.get(g.key) is not None and best[g.key] <= g.bound) for g in goals}
        per_seed[seed] = {"best_stage": name, **{g.key: best.get(g.key) for g in goals}}
        per_seed[seed].update({f"{g.key}_ci95": best.get(f"{g.key}_ci95") for g in goals})
        per_seed[seed]["targets_met"] = met
    for key, lower_is_better, text in CLAIMS:
        kinds = {}
        for seed in seeds:
            fa, fc = _final_stages(summaries[seed])
            kinds[seed] = verdict_kind(fa, fc, key, lower_is_better)
        counts[key] = {
            "claim": text,
            "per_seed": kinds,
            **{k: list(kinds.values()).count(k) for k in VERDICT_KINDS},
        }
    lines = [
        "# entropy-asr demo over seeds",
        "",
        f"Seeds {', '.join(map(str, seeds))}: one corpus, every model and stage seeded per run (each seed's own report "
        "is in its folder). Best stage of the entropy-aware recipe, with the 95% intervals over test utterances:",
        "",
        "| seed | best stage | " + " | ".join(g.text for g in goals) + " | targets met |",
        "|---|---|" + "---|" * len(goals) + "---|",
    ]
    for seed in seeds:
        row = per_seed[seed]
        cells = ["n/a" if row[g.key] is None else _shown(row, g.key) for g in goals]
        met = sum(row["targets_met"].values())
        lines.append(f"| {seed} | {row['best_stage']} | " + " | ".join(cells) + f" | {met} of {len(goals)} |")
    lines += [
        "",
        f"What the numbers say, over {len(seeds)} seeds (final stages; a claim is supported in a seed only when "
        "the two recipes' 95% intervals do not overlap):",
        "",
        "| claim | " + " | ".join(VERDICT_KINDS) + " |",
        "|---|" + "---|" * len(VERDICT_KINDS),
    ]
    for key, _, text in CLAIMS:
        lines.append(f"| {text} | " + " | ".join(str(counts[key][k]) for k in VERDICT_KINDS) + " |")
    lines.append("")
    return lines, {"seeds": seeds, "per_seed": per_seed, "claims": counts}


def best_stage_name(stages: dict[str, dict[str, Any]]) -> str | None:
    """The stage with the lowest mean of English WER and Mandarin CER (those measured; ties: the later
    stage); None when no stage has either."""

    def mean_rate(name: str) -> float:
        rates = [stages[name].get(k) for k in ("wer_en", "cer_zh")]
        rates = [r for r in rates if r is not None]
        return sum(rates) / len(rates) if rates else float("inf")

    ranked = [n for n in reversed(list(stages)) if mean_rate(n) < float("inf")]
    return min(ranked, key=mean_rate, default=None)


def chosen_stage(entry: dict[str, Any]) -> tuple[str | None, dict[str, Any], bool]:
    """(name, scores, re-scored) of a recipe's best stage: the lowest mean error rate on the per-stage subset
    (`best_stage_name`); when that stage was re-scored on the final stages' utterances (`entry["best_stage"]`),
    the better of it and the final stage there (ties: the final stage), with the scores on those utterances."""
    name = best_stage_name(entry["stages"])
    if name is None:
        return None, {}, False
    again = entry.get("best_stage")
    if not again or again.get("name") != name:
        return name, entry["stages"][name], False
    final = entry["final_stage"]
    if best_stage_name({name: again, final: entry["stages"][final]}) == final:
        return final, entry["stages"][final], False
    return name, again, True
