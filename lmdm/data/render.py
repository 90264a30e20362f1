"""Score -> MIDI -> audio: music21 for the score, pretty_midi for MIDI edits, the FluidSynth CLI to synthesise.

music21's MIDI writer is the first route; it fails on some ABC tunes with metre changes ("TimeSignature already
found"), so the second route writes the score's notes with pretty_midi directly. The route taken is recorded in
the manifest (``midi_route``) and counted at the end of a build, never dropped silently.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lmdm.audio.io import to_mono_float
from lmdm.data.corpus import Work
from lmdm.errors import LmdmError

# SoundFonts tried in order when none is given: Debian's fluid-soundfont-gm (FluidR3, 145 MB, the better one),
# Debian's timgm6mb-soundfont, then the TimGM6mb copy inside pretty_midi's wheel.
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
)


class RenderError(LmdmError, RuntimeError):
    """A work that could not be turned into audio; the message names the stage (parse, midi, synth)."""


def find_soundfont(path: str | Path | None = None) -> Path:
    """The General MIDI SoundFont to render with: ``path`` if given, else the first of
    ``SOUNDFONT_CANDIDATES`` that exists, else pretty_midi's bundled TimGM6mb.

    Raises:
        RenderError: ``path`` was given and does not exist.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise RenderError(f"SoundFont not found: {p}; give an existing .sf2/.sf3 file or leave --soundfont out")
        return p
    for c in SOUNDFONT_CANDIDATES:
        if Path(c).is_file():
            return Path(c)
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def find_fluidsynth() -> str:
    """Path of the ``fluidsynth`` executable.

    Raises:
        RenderError: FluidSynth is not installed; the message says how to install it.
    """
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise RenderError(
            "FluidSynth is not installed. Install it with `sudo apt-get install fluidsynth fluid-soundfont-gm` "
            "(Debian/Ubuntu), `brew install fluid-synth` (macOS) or `conda install -c conda-forge fluidsynth`."
        )
    return exe


def parse_work(work: Work):
    """The music21 score of ``work`` (``corpus.parse``)."""
    from music21 import corpus

    if work.number is not None:
        return corpus.parse(work.source_path, number=work.number)
    return corpus.parse(work.source_path)


def key_name(score) -> str | None:
    """The analysed key as caption text, e.g. "D minor", "B-flat major" (music21's Krumhansl key finding)."""
    try:
        k = score.analyze("key")
    except Exception:
        return None
    tonic = k.tonic.name.replace("-", "-flat").replace("#", "-sharp")
    return f"{tonic} {k.mode}"


def prevailing_meter(score) -> str | None:
    """The time signature that governs the most measures of ``score``'s first part, e.g. "2/4"; None without one.

    The corpus metadata's first time signature is not the piece's metre for many Essen and O'Neill tunes: their
    encodings open with (or alternate into) one-beat signatures such as 1/4 or 1/8 for pickups and short bars,
    which made captions say "1/8 time". Signatures with numerator 1 count only when nothing else occurs.
    """
    parts = getattr(score, "parts", None)
    part = parts[0] if parts else score
    counts: dict[str, int] = {}
    current = None
    for m in part.getElementsByClass("Measure"):
        if m.timeSignature is not None:
            current = m.timeSignature.ratioString
        if current is not None:
            counts[current] = counts.get(current, 0) + 1
    if not counts:
        found = list(score.recurse().getElementsByClass("TimeSignature"))
        return found[0].ratioString if found else None
    usual = {k: v for k, v in counts.items() if not k.startswith("1/")} or counts
    return max(usual, key=lambda k: (usual[k], k))


def _notes_route(score, bpm: float):
    """pretty_midi built from the score's notes, one instrument per part, quarter notes at ``bpm``.

    Tied notes are merged here (a tie start opens a note that its continuation extends) rather than with
    ``stripTies``, which deep-copies the whole score and took minutes on large works.
    """
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    sec = 60.0 / bpm
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    for part in parts:
        inst = pretty_midi.Instrument(program=0)
        open_ties: dict[int, pretty_midi.Note] = {}
        for n in part.flatten().notes:
            ql = float(n.quarterLength) or 0.25  # grace notes get a short duration
            vel = n.volume.velocity if n.volume is not None and n.volume.velocity else 80
            start = float(n.offset) * sec
            tie = n.tie.type if getattr(n, "tie", None) is not None else None
            for p in n.pitches:
                key = int(p.midi)
                held = open_ties.get(key)
                if held is not None and tie in ("continue", "stop") and abs(held.end - start) < 1e-6:
                    held.end = start + ql * sec
                    if tie == "stop":
                        del open_ties[key]
                    continue
                note = pretty_midi.Note(int(vel), key, start, start + ql * sec)
                inst.notes.append(note)
                if tie == "start":
                    open_ties[key] = note
        if inst.notes:
            pm.instruments.append(inst)
    if not pm.instruments:
        raise RenderError("midi: the score has no notes")
    return pm


def score_to_midi(score, bpm: float, has_own_tempo: bool):
    """MIDI of ``score`` at ``bpm``: ``(pretty_midi.PrettyMIDI, route)`` with route "music21" or "notes".

    A score with its own metronome mark keeps it (music21 route); otherwise times are rescaled from the writer's
    tempo to ``bpm``.
    """
    import pretty_midi

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "score.mid"
        try:
            score.write("midi", fp=str(path))
            pm = pretty_midi.PrettyMIDI(str(path))
            route = "music21"
        except Exception:
            return _notes_route(score, bpm), "notes"
    if not has_own_tempo:
        _, tempi = pm.get_tempo_changes()
        written = float(tempi[0]) if len(tempi) else 120.0
        end = pm.get_end_time()
        if end > 0 and abs(written - bpm) > 1e-6:
            pm.adjust_times([0.0, end], [0.0, end * written / bpm])
    if not any(i.notes for i in pm.instruments):
        raise RenderError("midi: the score has no notes")
    return pm, route


def _without_overlaps(notes: list) -> list:
    """Notes sorted by start with same-pitch overlaps removed (the earlier note ends where the next one starts):
    two note-ons of one key on one channel can leave a voice sounding after every note-off."""
    out, last = [], {}
    for n in sorted(notes, key=lambda n: (n.start, n.pitch)):
        prev = last.get(n.pitch)
        if prev is not None and prev.end > n.start:
            prev.end = n.start
        if prev is not None and prev.end - prev.start < 1e-3:
            out.remove(prev)
        out.append(n)
        last[n.pitch] = n
    return out


def prepare_midi(pm, program: int, max_seconds: float, release: float = 1.0):
    """A clean copy of ``pm`` for rendering: every part on GM ``program``, drums dropped, notes cropped to
    ``max_seconds``, same-pitch overlaps removed, 480 ticks per quarter at a constant tempo (note times are kept
    in seconds), and "all notes off" / "all sound off" on every channel after the last note.

    FluidSynth's file renderer runs until no voice sounds: a stuck voice of a sustained instrument (organ,
    clarinet) made it render forever on some music21 scores; the clean-up and the closing controllers end it.

    Returns:
        ``(pretty_midi.PrettyMIDI, end_time_seconds)`` with the end time of the last note.
    """
    import pretty_midi

    out = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0)
    for inst in pm.instruments:
        if inst.is_drum or not inst.notes:
            continue
        new = pretty_midi.Instrument(program=program, name=inst.name)
        new.notes = _without_overlaps([pretty_midi.Note(n.velocity, n.pitch, n.start, min(n.end, max_seconds))
                                       for n in inst.notes if n.start < max_seconds])
        if new.notes:
            out.instruments.append(new)
    end = max((n.end for i in out.instruments for n in i.notes), default=0.0)
    for inst in out.instruments:
        inst.control_changes += [pretty_midi.ControlChange(123, 0, end + 0.01),
                                 pretty_midi.ControlChange(120, 0, end + release)]
    return out, end


def render_midi(midi_path: str | Path, soundfont: str | Path, sample_rate: int, gain: float = 0.5,
                timeout: float = 120.0) -> np.ndarray:
    """Synthesise a MIDI file with the FluidSynth CLI; mono float32 ``(samples,)`` at ``sample_rate`` Hz.

    Raises:
        RenderError: FluidSynth failed, ran past ``timeout`` seconds, or produced no audio.
    """
    import soundfile as sf

    exe = find_fluidsynth()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "render.wav"
        cmd = [exe, "-ni", "-q", "-g", str(gain), "-r", str(sample_rate), "-F", str(out), str(soundfont), str(midi_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise RenderError(f"synth: fluidsynth did not finish within {timeout:.0f} s") from e
        if proc.returncode != 0 or not out.is_file():
            raise RenderError(f"synth: fluidsynth exited {proc.returncode}: {proc.stderr.strip()[:300]}")
        data, sr = sf.read(str(out), dtype="float32", always_2d=True)
    if data.size == 0:
        raise RenderError("synth: fluidsynth produced no samples")
    return to_mono_float(data, sr, sample_rate)


def finish_audio(audio: np.ndarray, sample_rate: int, end_time: float, tail: float = 1.0,
                 target_dbfs: float = -20.0, peak: float = 0.95) -> np.ndarray:
    """Trim to the last note's end plus ``tail`` seconds (with a 50 ms fade-out) and normalise loudness to
    ``target_dbfs`` RMS, never letting the peak exceed ``peak``.

    Raises:
        RenderError: the audio is silent.
    """
    n = min(len(audio), int((end_time + tail) * sample_rate))
    a = audio[:n].astype(np.float32).copy()
    fade = min(n, int(0.05 * sample_rate))
    if fade:
        a[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    rms = float(np.sqrt(np.mean(a**2))) if n else 0.0
    if rms < 1e-5:
        raise RenderError("synth: rendered audio is silent")
    a *= 10 ** (target_dbfs / 20) / rms
    m = float(np.abs(a).max())
    if m > peak:
        a *= peak / m
    return a
