"""Run the trainer and SIGKILL it in the middle of saving one iteration (a subprocess of
test_resume.py): ``python kill_during_save.py POINT ITERATION TRAINER-FLAGS...``.

POINT ``write``: after every tensor of the checkpoint is in its staging directory, before the
rename; ``tracker``: after the rename, before the tracker names the new directory."""
import os
import signal
import sys
from types import SimpleNamespace

import megatron_hpt.training.checkpoint as ck


def main() -> int:
    point, iteration, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if point == "write":
        real = ck.dist_checkpointing

        def save(state, path, *args, **kwargs):
            real.save(state, path, *args, **kwargs)
            if path.endswith(f"iter_{iteration:07d}.tmp"):
                os.kill(os.getpid(), signal.SIGKILL)
        ck.dist_checkpointing = SimpleNamespace(save=save, load=real.load)
    else:
        write = ck._write_atomic

        def write_then_maybe_die(path, text):
            if path.endswith(ck.TRACKER) and text == str(iteration):
                os.kill(os.getpid(), signal.SIGKILL)
            write(path, text)
        ck._write_atomic = write_then_maybe_die
    from megatron_hpt.train import main as train_main
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
