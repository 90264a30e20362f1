"""The benchmark's result as text (``lmdm bench``) and as the README's measured table (``lmdm bench --markdown``).

Both are printed from the result dict (the ``--json`` file), never from numbers typed by hand: the README's
table is the output of ``lmdm bench --from-json runs/bench/bench.json --markdown``. The headline lines are written
once (:func:`headlines`) and shared by both formats.
"""
from __future__ import annotations

import math

#: Streamer labels of the tables.
LABELS = {"outpainting": "outpainting", "enc_dec": "LMDM enc-dec", "block_causal": "LMDM block-causal",
          "lmm": "LMM (untrained), CFG", "lmm_unguided": "LMM (untrained), no CFG"}

#: Columns of the streamer table: (key in a table row, header, format).
COLUMNS = [
    ("cfg_rows", "rows/pass", "{:d}"),
    ("params_M", "params (M)", "{:.1f}"),
    ("sequential_passes_per_block", "sequential passes/block", "{:d}"),
    ("analytic_GFLOP_per_block", "GFLOP/block analytic", "{:.2f}"),
    ("counted_GFLOP_per_block", "GFLOP/block counted", "{:.2f}"),
    ("wall_ms_per_block", "wall ms/block", "{:.0f}"),
    ("rtf_model", "RTF (model)", "{:.3f}"),
    ("achieved_GFLOP_s", "GFLOP/s", "{:.1f}"),
    ("mfu", "MFU", "{:.1%}"),
    ("bootstrap_ms", "bootstrap ms", "{:.0f}"),
    ("fused_first_step_ms", "fused first step ms", "{:.1f}"),
    ("subsequent_step_ms", "subsequent step ms", "{:.1f}"),
    ("peak_MB", "peak MB", "{:.1f}"),
]

#: Columns of the thread-policy table.
POLICY_COLUMNS = [
    ("torch_threads", "threads", "{:d}"),
    ("loadavg_before_quiet", "load avg before quiet run", "{:.1f}"),
    ("rtf_quiet", "RTF quiet", "{:.3f}"),
    ("rtf_loaded", "RTF under load", "{:.3f}"),
    ("jam_underruns_loaded", "jam underruns under load", "{:d}"),
    ("jam_blocks", "jam blocks", "{:d}"),
    ("jam_rtf_loaded", "jam RTF under load", "{:.3f}"),
]


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def _rows(result: dict) -> tuple[list[str], list[list[str]]]:
    head = ["streamer"] + [h for _, h, _ in COLUMNS]
    body = [[LABELS.get(r["streamer"], r["streamer"])] + [_cell(r.get(k), f) for k, _, f in COLUMNS]
            for r in result["table"]]
    return head, body


def _policy_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    pol = result.get("thread_policies") or {"rows": []}
    head = ["thread policy"] + [h for _, h, _ in POLICY_COLUMNS]
    jam = (result.get("summary") or {}).get("jam_policy")
    body = [[r["policy"] + (" (live default)" if r["policy"] == pol.get("live_policy") else "")
             + (" (live jam)" if r["policy"] == jam else "")]
            + [_cell(r.get(k), f) for k, _, f in POLICY_COLUMNS] for r in pol["rows"]]
    return head, body


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def _text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths)))
                     for row in [head, *body])


def headlines(result: dict) -> list[str]:
    """The settings line, the ratios measured side by side, live use and the targets (one line each)."""
    s, g, pc = result["summary"], result["generate"], result["prompt_change"]
    fr = s["flop_ratio_outpainting_over_block_causal"]
    m = s["machine"]
    peak = result["gemm_peak"]
    small = min(peak["shapes"], key=lambda r: r["m"])
    lines = [
        (f"block {s['block_seconds'] * 1000:.0f} ms ({s['block_frames']} frames), context {s['context_frames']} "
        f"frames, S={s['steps']}, CFG {s['cfg_scale']} for the LMDMs and the LMM (two rows per pass); LMM weights are "
        f"untrained (cost only), depth {s['lmm_depth']}; {m['cores']} cores, {m['torch_threads']} torch threads, "
        f"load average {m.get('loadavg_1min', float('nan')):.1f} at the start"),
        (f"GEMM peak {peak['peak_GFLOP_s']:.1f} GFLOP/s ({peak['dtype']}, {peak['threads']} threads, measured in this "
        f"run; {small['GFLOP_s']:.1f} GFLOP/s at the block-causal step's {small['m']}x{small['k']}x{small['n']})"),
        (f"outpainting / block-causal FLOPs: {fr['counted']:.2f}x counted, {fr['analytic']:.2f}x analytic "
        f"({100 * fr['counted_vs_analytic']:+.1f}%)"),
        (f"outpainting / block-causal wall time: {s['wall_ratio_outpainting_over_block_causal']:.2f}x "
        f"= {s['wall_ratio_over_flop_ratio']:.2f} of the FLOP ratio"
        + (f"; the GEMM rates of the two steps' shapes, measured above, allow at most "
           f"{s['wall_over_flop_ceiling']:.2f} ({small['GFLOP_s']:.0f} vs {s['gemm_outpainting_GFLOP_s']:.0f} GFLOP/s)"
           if s.get("wall_over_flop_ceiling") else "")),
        (f"LMDM ({s['best_lmdm']}) vs LMM at matched guidance, per second of audio: "
        f"{s['lmdm_speedup_over_lmm']:.1f}x faster"),
        (f"fused first step / subsequent step (block-causal): {s['fused_over_subsequent_step']:.2f}x wall"
         + (f", {s['fused_over_subsequent_flops']:.2f}x FLOPs (the clean chunk's tokens beside the target's)"
            if s.get("fused_over_subsequent_flops") else "")),
        (f"generate end to end ({g['seconds']:.0f} s): RTF model {g['rtf_model']:.3f} + decode {g['rtf_decode']:.3f} "
        f"= {g['rtf']:.3f}" + (f" ({g['precision']} matrix multiplications, Griffin-Lim {g['gl_iters']} iterations "
                               f"from the {g['gl_init']} phase: lmdm generate's defaults)" if "precision" in g else "")
        + (f"; float32: model {g['float32']['rtf_model']:.3f} + decode {g['float32']['rtf_decode']:.3f} = "
           f"{g['float32']['rtf']:.3f}" if "float32" in g else "")),
        (f"prompt change -> first block with the new prompt, decoded: {pc['prompt_change_ms']:.0f} ms median of "
        f"{pc['changes']} (a steady block: {pc['steady_block_ms']:.0f} ms; text encoding included)"),
    ]
    pol = result.get("thread_policies")
    if pol:
        live = next((r for r in pol["rows"] if r["policy"] == pol["live_policy"]), None)
        jam = next((r for r in pol["rows"] if r["policy"] == s.get("jam_policy")), None)
        if live is not None:
            lines.append(f"under a competing {pol['load_threads']}-thread load: generate RTF {live['rtf_loaded']:.3f} "
                         f"({live['policy']}, generate's policy)")
        if jam is not None:
            lines.append(f"under a competing {pol['load_threads']}-thread load: jam of "
                         f"{result['config']['jam_seconds']:g} s, {jam['jam_underruns_loaded']} underruns of "
                         f"{jam['jam_blocks']} blocks, RTF {jam['jam_rtf_loaded']:.3f} ({jam['policy']}, the live "
                         f"jam's policy: lmdm jam and the widgets' worker)")
        lines.append(f"thread policy best under load: {pol['best_under_load']}; live default {pol['live_policy']}; "
                     f"recommendation (lmdm.streaming.threads.LIVE_POLICY): {pol['recommendation']}")
    met = {True: "met", False: "MISSED", None: "not measured"}
    lines.append("targets: " + "; ".join(
        f"{t['name']} {_cell(t['value'], '{:.3g}')} {t['op']} {t['target']:g} {met[t['met']]}" for t in s["targets"]))
    return lines


def format_report(result: dict) -> str:
    """The streamer table, the thread-policy table and the headline lines as plain text."""
    parts = [_text_table(*_rows(result))]
    if result.get("thread_policies"):
        parts += ["", _text_table(*_policy_rows(result))]
    parts += [""] + headlines(result) + ["figures: " + ", ".join(result["figures"])]
    return "\n".join(parts)


def markdown_report(result: dict) -> str:
    """The README's measured table: the streamer table, the headline lines as a list and the thread-policy
    table, in GitHub markdown."""
    parts = [markdown_table(*_rows(result)), "", *("- " + line for line in headlines(result))]
    if result.get("thread_policies"):
        parts += ["", markdown_table(*_policy_rows(result))]
    return "\n".join(parts)
