"""The subset reader against PyYAML: for any text it gives exactly what PyYAML gives (values,
types, lines, duplicate keys) or steps aside (None), never something else.

That promise is what lets `read_yaml` skip PyYAML for most configs, so it is tested three ways:
every YAML file the project ships, hand-picked texts at the edge of the subset, and generated
documents built from tokens YAML 1.1 reads in surprising ways, plus random damage to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cpbench import explain as bench_explain
from hypothesis import given, settings
from hypothesis import strategies as st

from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.yamllines import LineList, LineMap
from connectproxy.configfile.yamlreader import read_with_pyyaml, read_yaml
from connectproxy.configfile.yamlsubset import read_subset

ROOT = Path(__file__).resolve().parents[3]


def same(a: Any, b: Any, where: str = "") -> None:
    """Equal values of the same types, with the same lines and duplicates throughout."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, LineMap):
        assert (a.line, a.key_lines, a.duplicates) == (b.line, b.key_lines, b.duplicates), where
        assert list(a) == list(b), where
        for key in a:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, LineList):
        assert (a.line, a.item_lines, len(a)) == (b.line, b.item_lines, len(b)), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def pyyaml(text: str) -> tuple[Any, int | None] | None:
    """What PyYAML reads, or None where it refuses the text."""
    try:
        return read_with_pyyaml(text, "t")
    except ConfigError:
        return None


def check(text: str) -> tuple[Any, int | None] | None:
    """The subset's answer, after holding it to PyYAML's."""
    subset = read_subset(text)
    if subset is not None:
        expected = pyyaml(text)
        assert expected is not None, f"the subset read a text PyYAML refuses:\n{text}"
        same(subset[0], expected[0])
        assert subset[1] == expected[1]
    return subset


SHIPPED = sorted(
    [
        ROOT / "src/connectproxy/config/default.yaml",
        *(ROOT / "config").rglob("*.yaml"),
        *(ROOT / "deploy").rglob("*.yaml"),
    ]
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_file_reads_as_pyyaml_reads_it(path: Path) -> None:
    check(path.read_text(encoding="utf-8"))


def test_the_large_benchmark_config_is_in_the_subset() -> None:
    """The config `explain` must answer on quickly: it must not fall back to PyYAML."""
    assert check(bench_explain.large_config_text(8443)) is not None


INSIDE = [
    "a: 1\n",
    "a:\n",
    "# only\na: 'x'  # comment\n",
    "a:\n  b: [1, 2.5, -3, x.y, 'q', \"r\"]\n  c: []\n",
    "a:\n- 1\n- name: x\n  m: [ ]\nb: c\n",
    "a:\n  - - 1\n    - 2\n  -   k: v\n      l: w\n",
    "a: 1\na: 2\nb: 3\na: 4\n",
    "list:\n  - \"10.0.0.0/8\"\n  - '::1'\n",
    "k: 0\nj: -0\nf: 0.0\n",
    "",
    "\n# nothing\n",
]

OUTSIDE = [
    "a: yes\n",
    "a: Off\n",
    "a: null\n",
    "a: ~\n",
    "on: 1\n",
    "a: 0x1f\n",
    "a: 017\n",
    "a: 1:20\n",
    "a: 1_000\n",
    "a: 2024-01-01\n",
    "a: .5\n",
    "a: .inf\n",
    "a: 1e5\n",
    "a: +1\n",
    "a: &x 1\nb: *x\n",
    "a: !!str 1\n",
    "a: |\n  text\n",
    "a: >\n  text\n",
    'a: "x\\ty"\n',
    "a: 'it''s'\n",
    'a: "two\n  lines"\n',
    "a: two\n  lines\n",
    "a: two words\n",
    "a: {b: 1}\n",
    "a: [1, [2]]\n",
    "a: [1,]\n",
    "a: [1, 2\n",
    "---\na: 1\n",
    "a: 1\n...\n",
    "a:\tb\n",
    "a: 1\r\n",
    "a: é\n",
    '"a": 1\n',
    "a b: 1\n",
    "a : 1\n",
    "a:b\n",
    "<<: {}\n",
    "  a: 1\n",
    "- a\n",
    "a: 1\n  b: 2\n",
    "a:\n    b: 1\n  c: 2\n",
    "a:\n  - x\n  b: 1\n",
    "a: -\n",
    "a:\n-\n",
    "a: - x\n",
    "a: http://x:1\n",
    "a: x#y\n",
    "a: 'x' y\n",
    "a:\n  value\n",
    "a: [x] y\n",
]


@pytest.mark.parametrize("text", INSIDE)
def test_texts_inside_the_subset(text: str) -> None:
    assert check(text) is not None


@pytest.mark.parametrize("text", OUTSIDE)
def test_texts_outside_are_left_to_pyyaml(text: str) -> None:
    """Whatever YAML 1.1 reads in a way the subset does not copy exactly is not read here, and
    `read_yaml` still gives PyYAML's answer or its error."""
    assert read_subset(text) is None
    try:
        expected = read_with_pyyaml(text, "t")
    except ConfigError as error:
        with pytest.raises(ConfigError) as raised:
            read_yaml(text, "t")
        assert str(raised.value) == str(error)
    else:
        same(read_yaml(text, "t")[0], expected[0])


# Tokens a generated document is made of: plain words, numbers, and what YAML 1.1 reads as
# something else (booleans, null, octal, sexagesimal, dates, specials) or refuses.
SCALARS = st.sampled_from(
    [
        "a",
        "x.y-z/1",
        "_u",
        "0",
        "7",
        "-3",
        "1.5",
        "-0.25",
        "007",
        "0x1f",
        "1:20",
        "1_0",
        "2024-01-01",
        "yes",
        "No",
        "on",
        "OFF",
        "true",
        "Null",
        "~",
        ".inf",
        ".5",
        "1e3",
        "'q'",
        "'it''s'",
        "''",
        '""',
        '"d q"',
        '"e\\n"',
        '"#x"',
        "a b",
        "a#b",
        "a #c",
        "-",
        "- x",
        "[]",
        "[a, 1]",
        '["x", "y"]',
        "[a,]",
        "{a: 1}",
        "&x a",
        "*x",
        "!!str 1",
        "|",
        "é",
    ]
)
KEYS = st.sampled_from(["a", "b", "key", "x.y", "yes", "on", "1", "'q'", "a b", "<<", "-k"])
COMMENTS = st.sampled_from(["", "", "  # c", " #c", "#c"])


@st.composite
def documents(draw: st.DrawFn, depth: int = 0, indent: int = 0) -> list[str]:
    """Lines of a block mapping or sequence at `indent`, with nested blocks and odd spacing."""
    lines: list[str] = []
    sequence = depth > 0 and draw(st.booleans())
    pad = " " * indent
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["", "# note", pad + "  # note"])))
        lead = pad + ("- " if sequence else draw(KEYS) + ":")
        if depth < 3 and draw(st.integers(0, 2)) == 0:
            step = draw(st.sampled_from([2, 4, 1, 0]))
            inner = draw(documents(depth + 1, indent + step))
            lines.append(lead.rstrip() + draw(COMMENTS))
            lines.extend(inner)
        else:
            gap = draw(st.sampled_from([" ", "  ", ""]))
            lines.append(lead + gap + draw(SCALARS) + draw(COMMENTS))
    return lines


@settings(max_examples=600, deadline=None)
@given(documents())
def test_generated_documents(lines: list[str]) -> None:
    check("\n".join(lines) + "\n")


@settings(max_examples=400, deadline=None)
@given(documents(), st.integers(0, 10_000), st.sampled_from(["", " ", "-", ":", "#", "\n", "'"]))
def test_damaged_documents(lines: list[str], at: int, insert: str) -> None:
    """One character dropped or added anywhere: still PyYAML's reading or no reading."""
    text = "\n".join(lines) + "\n"
    at %= len(text)
    check(text[:at] + insert + text[at + 1 :])


@st.composite
def quoted_lists(draw: st.DrawFn) -> str:
    """`["a", "b"]` lines, mostly in the one spelling the reader has a shortcut for, with the
    characters that could fool a shortcut (quotes, brackets, commas, backslashes, comments)."""
    words = st.text(alphabet='ab.*-],"\\# ', max_size=6)
    separators = st.sampled_from([", ", ", ", ", ", ",", " ,", ",  "])
    items = draw(st.lists(words, min_size=1, max_size=4))
    text = "["
    for index, item in enumerate(items):
        text += (draw(separators) if index else "") + '"' + item + '"'
    return text + "]" + draw(st.sampled_from(["", "", " # c", '  # "]', "x", '"]', ", "]))


@settings(max_examples=600, deadline=None)
@given(quoted_lists())
def test_quoted_lists_read_as_pyyaml_reads_them(line: str) -> None:
    check(f"a: {line}\nb:\n  - {line}\n")
