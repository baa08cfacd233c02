"""Infrastructure shared by training, evaluation and inference (no model or data logic).

`sharding` (the ("data", "fsdp") mesh), `distributed` (multi-process start-up and agreement),
`checkpointing` (orbax), `preemption` (SIGTERM stops), `nonfinite` (the skipped-step guard),
`writers` (metrics), `fileio` (local and gs:// files), `compile_options` (XLA options).
"""
