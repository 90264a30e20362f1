"""The bundled example recording (``data/examples/``), rebuilt with ``lmdm data example``.

A solo line for notebooks and CI without a microphone: a Scottish air from the music21 corpus (Airds Airs, book
1, no. 3) rendered on violin with FluidSynth, 12 seconds, 16 kHz mono FLAC.
"""
from __future__ import annotations

from pathlib import Path

from lmdm.audio.io import save_audio
from lmdm.data.corpus import corpus_works
from lmdm.data.instruments import instrument
from lmdm.data.render import find_soundfont, finish_audio, parse_work, prepare_midi, render_midi, score_to_midi

EXAMPLE_WORK = "airdsAirs__book1__0003"
EXAMPLE_PATH = Path(__file__).resolve().parents[2] / "data" / "examples" / "violin_air.flac"


def build_example(out: str | Path = EXAMPLE_PATH, seconds: float = 12.0, sample_rate: int = 16000,
                  soundfont: str | None = None) -> Path:
    """Render the example recording to ``out``.

    Raises:
        FileNotFoundError: FluidSynth or the SoundFont is missing.
    """
    import tempfile

    work = {w.work_id: w for w in corpus_works()}[EXAMPLE_WORK]
    pm, _ = score_to_midi(parse_work(work), bpm=96.0, has_own_tempo=work.tempo_bpm is not None)
    pm, end = prepare_midi(pm, instrument("violin").program, seconds)
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "example.mid"
        pm.write(str(mid))
        audio = render_midi(mid, find_soundfont(soundfont), sample_rate)
    audio = finish_audio(audio, sample_rate, end, tail=0.5)[: int(seconds * sample_rate)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_audio(out, audio, sample_rate)
