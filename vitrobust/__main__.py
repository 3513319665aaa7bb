"""`python -m vitrobust ...` (what torchrun runs: torchrun --nproc_per_node N -m vitrobust train ...)."""

from vitrobust.cli import run

if __name__ == "__main__":
    run()
