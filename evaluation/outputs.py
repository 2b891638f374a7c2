"""Model outputs in AlpacaEval's layout, ``[{"instruction", "output", "generator", "dataset"}]``.

Every evaluation reads this one layout (what ``iit generate`` writes), so outputs from any other
tool can be scored the same way. Whether each output ended with EOS is not part of the layout;
it is taken from a per-record ``ended_with_eos`` field or from the manifest ``iit generate``
writes next to the file, and is ``None`` when neither says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from implicit_it.data import read_instructions
from implicit_it.errors import DataFormatError
from implicit_it.manifest import read_sidecar


@dataclass(frozen=True)
class ModelOutput:
    instruction: str
    output: str
    generator: str | None = None
    dataset: str = ""
    ended_with_eos: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "output": self.output, "generator": self.generator or "", "dataset": self.dataset}


def _eos_flags_from_manifest(path: Path, n: int) -> list[bool] | None:
    """Per-record EOS flags from the sidecar ``iit generate`` wrote, only if it describes this very file (a stale one,
    left by a kill between the outputs and their sidecar, would give another run's flags)."""
    manifest = read_sidecar(path)
    try:
        per_record = manifest["results"]["per_record"]  # type: ignore[index]
        flags = [bool(r.get("ended_with_eos")) for r in per_record]
    except (KeyError, TypeError, AttributeError):
        return None
    return flags if len(flags) == n else None


def read_model_outputs(path: str | Path, *, limit: int | None = None) -> list[ModelOutput]:
    """Read an AlpacaEval-format outputs file; a record without a string ``output`` is an error naming it."""
    path = Path(path)
    items = read_instructions(path)
    flags = _eos_flags_from_manifest(path, len(items))
    out = []
    for i, item in enumerate(items):
        if not isinstance(item.reference_output, str):
            raise DataFormatError(path, None, f"record {i}: field 'output' must be a string (the model's response)")
        eos = item.extra.get("ended_with_eos", flags[i] if flags is not None else None)
        out.append(ModelOutput(item.instruction, item.reference_output, item.generator, item.dataset, None if eos is None else bool(eos)))
    return out[:limit] if limit is not None else out


def generator_name(outputs: Sequence[ModelOutput], default: str) -> str:
    names = {o.generator for o in outputs if o.generator}
    return names.pop() if len(names) == 1 else default
