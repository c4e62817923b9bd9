"""Sentence splitting: pieces concatenate back to the document; literal examples."""

from hypothesis import given, settings, strategies as st

from ptobj.data_pipeline.sentences import split_code, split_prose

TEXT = st.text(alphabet=st.sampled_from(list("ab .!?\n\t\"A1")), max_size=80)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_pieces_rebuild_the_text_and_carry_content(text):
    for split in (split_prose, split_code):
        pieces = split(text)
        assert "".join(pieces) == text
        if len(pieces) > 1:
            assert all(p.strip() for p in pieces)


def test_prose_literal():
    text = "It rains. Does it? Yes!  Fine.\n\nNew paragraph here. e.g. lower case stays"
    # a sentence starts after .!? + whitespace only before an upper-case letter or digit
    assert split_prose(text) == ["It rains.", " Does it?", " Yes!", "  Fine.",
                                 "\n\nNew paragraph here. e.g. lower case stays"]


def test_code_literal():
    code = "import os\nx = 1\n\n\ndef f():\n    return 1\n  \nclass A:\n    pass\n"
    assert split_code(code) == ["import os\nx = 1\n\n\n", "def f():\n    return 1\n  \n", "class A:\n    pass\n"]
