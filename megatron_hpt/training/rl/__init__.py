"""The RL task (every preset but sft) as named steps, one module each: sample -> grade -> gate ->
rows -> mini-batches -> old / reference log-probs -> advantages (``task.RlTask`` reads as that
list; docs/ARCHITECTURE.md). ``config.py`` holds its flags and checks. Nothing is imported here,
so ``arguments.py`` can read ``config.py`` without loading the task."""
