"""Captions from score metadata: composer, form/collection, key, metre, tempo, instrument.

The manifest stores the fields and one full caption per piece. Training draws among :func:`caption_variants`
(full sentence, short "label on instrument" forms like the prompts people type, instrument only, ...) so a
short user prompt such as "a slow Bach chorale on church organ" lands near what the model saw.
"""
from __future__ import annotations

from typing import Mapping


def tempo_word(bpm: float) -> str:
    """"slow" below 76 BPM, "moderate" below 112 BPM, else "lively"."""
    return "slow" if bpm < 76 else ("moderate" if bpm < 112 else "lively")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def caption(f: Mapping[str, object]) -> str:
    """The full caption of a piece from its manifest fields (``label``, ``form``, ``composer``, ``key``, ``meter``,
    ``bpm``, ``instrument``); missing fields are left out."""
    tw = tempo_word(float(f["bpm"]))
    s = f"{_article(tw).capitalize()} {tw} {f['form']}"
    if f.get("composer"):
        s += f" by {f['composer']}"
    if f.get("key"):
        s += f" in {f['key']}"
    if f.get("meter"):
        s += f", {f['meter']} time"
    s += f" at {int(round(float(f['bpm'])))} BPM, played on {f['instrument']}."
    return s


def caption_variants(f: Mapping[str, object]) -> list[str]:
    """Several phrasings of the same piece for training (the first is :func:`caption`)."""
    tw = tempo_word(float(f["bpm"]))
    label, inst = str(f["label"]), str(f["instrument"])
    out = [
        caption(f),
        f"{_article(tw)} {tw} {label} on {inst}",
        f"{label} played on {inst}",
        f"{inst} playing {_article(str(f['form']))} {f['form']}" + (f" in {f['key']}" if f.get("key") else ""),
        f"solo {inst}" if inst not in ("string ensemble", "choir", "brass section") else inst,
        f"{tw} {label}",
    ]
    return list(dict.fromkeys(out))
