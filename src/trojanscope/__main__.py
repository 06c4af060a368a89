"""``python -m trojanscope``: the command line."""

from trojanscope.entry import main

main()
