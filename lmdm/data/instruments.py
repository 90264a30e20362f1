"""The instruments a piece can be rendered with, so that text can steer timbre.

Each rendered piece gets one instrument, drawn deterministically from this list; every part of the score is
played with that General MIDI program. The names are what captions say ("played on church organ").
Programs are 0-based General MIDI numbers (GM 1 "Acoustic Grand Piano" is 0).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Instrument:
    """One render timbre: caption ``name``, General MIDI ``program`` (0-based), ``family`` for coarse labels."""

    name: str
    program: int
    family: str


INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("piano", 0, "keyboard"),
    Instrument("harpsichord", 6, "keyboard"),
    Instrument("church organ", 19, "organ"),
    Instrument("vibraphone", 11, "mallet"),
    Instrument("nylon guitar", 24, "plucked"),
    Instrument("harp", 46, "plucked"),
    Instrument("string ensemble", 48, "strings"),
    Instrument("violin", 40, "strings"),
    Instrument("choir", 52, "voice"),
    Instrument("flute", 73, "woodwind"),
    Instrument("clarinet", 71, "woodwind"),
    Instrument("brass section", 61, "brass"),
)

BY_NAME = {i.name: i for i in INSTRUMENTS}


def instrument(name: str) -> Instrument:
    """Look up an instrument by caption name.

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown instrument {name!r}; valid: {', '.join(BY_NAME)}") from None
