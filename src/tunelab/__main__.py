"""`python -m tunelab …`: what torchrun and accelerate launch (`torchrun -m tunelab train CONFIG`)."""

from tunelab.cli import main

main()
