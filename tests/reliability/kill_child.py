"""A training run (``train``) or a study (``study``) that SIGKILLs itself at one chosen point (``kill``).

``save_state``: inside a checkpoint save at step ``at`` (of an output directory whose path contains
``where``), after the weights, optimizer and RNG state are written and before ``trainer_state.json``
(a kill, or a full disk, mid-save);
``step``: at the end of optimizer step ``at``, before its checkpoint is saved (between steps);
``manifest``: after the trained model is saved into the output directory, before ``train_manifest.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(kill: str, at: int, where: str = "") -> list:
    """Patch this process only; returns the callbacks to pass to ``train_variant``."""
    if kill == "save_state":
        from transformers.trainer_callback import TrainerState

        real = TrainerState.save_to_json

        def save_to_json(self, json_path):
            if self.global_step == at and f"checkpoint-{at}" in json_path and where in json_path:
                die()
            return real(self, json_path)

        TrainerState.save_to_json = save_to_json
    elif kill == "step":
        from transformers import TrainerCallback

        class KillAtStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == at:
                    die()

        return [KillAtStep()]
    elif kill == "manifest":
        import implicit_it.training.engine as engine

        real_write = engine.atomic_write_json

        def atomic_write_json(path, obj, **kw):
            if Path(path).name == engine.MANIFEST_NAME:
                die()
            return real_write(path, obj, **kw)

        engine.atomic_write_json = atomic_write_json
    return []


def main() -> None:
    args = json.loads(sys.argv[1])
    from implicit_it.app.config import parse_config

    cfg = parse_config(args["config"])
    callbacks = arm(args["kill"], int(args.get("at", 0)), args.get("where", ""))
    if args["mode"] == "train":
        from implicit_it.training import Variant, train_variant

        train_variant(cfg, Variant("response"), out_dir=args["out"], callbacks=callbacks, show_progress=False)
    else:
        from implicit_it.app.pipeline import run_study

        assert not callbacks, "the study's training takes no extra callbacks"
        run_study(cfg, args["out"], show_progress=False)
    print("finished without being killed")


if __name__ == "__main__":
    main()
