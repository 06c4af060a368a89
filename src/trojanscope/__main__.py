"""``python -m trojanscope``: the command line."""

from trojanscope.cli import main

main()
