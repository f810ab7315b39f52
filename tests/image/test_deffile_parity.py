"""Definition files read exactly as Apptainer's parser reads them, on the points where that is
subtle (found by ``tools/apptainer_deffile_parity.py`` against Apptainer's own test data)."""

from __future__ import annotations

import pytest

from instancelib import Definition, DefinitionError

BODY = "%help\nSome help.\n# a comment line\n%runscript\n    echo run\n\n"


def test_a_file_opening_with_a_section_has_that_section_trimmed():
    # Apptainer reads the first piece of a file with its white space trimmed: when that
    # piece is a section (no header, nothing before it), its trailing newlines go too.
    parsed = Definition.parse(BODY)
    assert parsed.section("help").script == "Some help.\n# a comment line"
    assert parsed.section("runscript").script == "    echo run\n\n"  # the others verbatim


@pytest.mark.parametrize("before", ["# a comment first\n", "\n", "   \n"])
def test_anything_before_the_first_section_keeps_it_verbatim(before):
    parsed = Definition.parse(before + BODY)
    assert parsed.section("help").script == "Some help.\n# a comment line\n"


def test_a_file_opening_with_an_empty_section_is_refused():
    with pytest.raises(DefinitionError, match="could not be split into a section name"):
        Definition.parse("%post\n   \n%runscript\n    echo run\n")
    assert Definition.parse("\n%post\n%runscript\n    echo run\n").section("post").script == ""


def test_raw_text_of_one_definition_and_of_stages():
    text = "# before the header\nBootstrap: busybox\n%post\n    true\n"
    # One definition (Apptainer's ParseDefinitionFile): its raw text is the whole file.
    assert Definition.parse(text).raw == text
    # Stages (Apptainer's All): each from its Bootstrap: line; full_raw is the file.
    (stage,) = Definition.parse_stages(text)
    assert stage.raw == text[text.index("Bootstrap"):] and stage.full_raw == text
