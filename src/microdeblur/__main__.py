"""`python -m microdeblur` runs the command line."""

from .cli import run

run()
