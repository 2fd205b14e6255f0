"""`python -m flywheel`: the flywheel CLI."""

from flywheel.entrypoints.cli import main

main()
