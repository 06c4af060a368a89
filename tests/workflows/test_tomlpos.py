"""Lines of keys in TOML text (tomllib gives none): tables, arrays of tables, dotted and
quoted keys, inline tables, multi-line arrays, strings that look like keys."""

import tomllib

from trojanscope.workflows.tomlpos import key_lines, locate

DOC = '''\
# a comment with = and [brackets]
levels = ["narrow",
  "small"]                      # line 3
"quoted.key" = 1
datasets = [
  { name = "digits" },          # line 6
  { name = "x", params = { limit = 9 } },
]
[[attacks]]                     # line 9
name = "badnets"
[[attacks]]                     # line 11
name = "blended"
params.alpha = 0.2              # line 13
note = """a = 1
[[attacks]]
"""
[injection.acceptance]          # line 17
min_asr = 0.9
'''


def test_every_key_and_element_has_its_line():
    tomllib.loads(DOC)  # the scanner only ever sees valid TOML
    lines = key_lines(DOC)
    assert lines[("levels",)] == 2 and lines[("levels", 1)] == 3
    assert lines[("quoted.key",)] == 4
    assert lines[("datasets", 0, "name")] == 6
    assert lines[("datasets", 1, "params", "limit")] == 7
    assert lines[("attacks", 0)] == 9 and lines[("attacks", 0, "name")] == 10
    assert lines[("attacks", 1)] == 11 and lines[("attacks", 1, "params", "alpha")] == 13
    assert ("attacks", 2) not in lines  # inside a multi-line string
    assert lines[("injection",)] == 17 and lines[("injection", "acceptance", "min_asr")] == 18


def test_locate_falls_back_to_the_deepest_written_part():
    assert locate(DOC, ("datasets", 1, "params", "limit")) == 7
    assert locate(DOC, ("attacks", 1, "params", "size")) == 13  # unwritten: its table
    assert locate(DOC, ("levels", 5)) == 2
    assert locate(DOC, ("training", "epochs")) is None
    assert locate("x = [1, 2", ("x", 1)) == 1  # broken text: as far as the scan got
