"""The leave-one-subject-out (LOSO) protocol as one command: for every fold, train without the
fold's subjects, predict its held-out subjects with that fold's adapter, then pool every fold's
predictions and score them once. It sits above the stages (train, eval) and runs them in order,
as the demo does; launchers decide only where each fold runs (this machine, its GPUs, SLURM, Ray)."""
