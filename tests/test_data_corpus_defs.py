"""The stdlib-defs corpus: standard-library files cut at their top-level definitions."""

from __future__ import annotations

import ast

from ptobj.data_pipeline.config import CorpusConfig
from ptobj.data_pipeline.corpus import definition_documents, open_corpus

SOURCE = '''"""Module doc."""
import os

X = 1


# helper, with its comment
@staticmethod
def f(a):
    return a


class K:
    def g(self):
        pass
print(X)
'''


def test_a_module_is_cut_at_its_top_level_definitions():
    docs = definition_documents(SOURCE)
    assert "".join(docs).split() == SOURCE.split()                 # nothing lost or reordered
    assert docs[0].startswith('"""Module doc."""') and "X = 1" in docs[0]
    assert docs[1].lstrip().startswith("# helper") and "@staticmethod" in docs[1] and "return a" in docs[1]
    assert docs[2].startswith("class K:") and docs[3] == "print(X)\n"
    assert all(ast.parse(d) for d in docs)
    assert definition_documents("def broken(:\n") == ["def broken(:\n"]


def test_stdlib_defs_reads_the_same_files_as_shorter_documents():
    cfg = CorpusConfig(source="stdlib-defs", max_bytes=60_000)
    defs = list(open_corpus(cfg).documents())
    files = list(open_corpus(CorpusConfig(source="stdlib-code", max_bytes=60_000)).documents())
    assert len(defs) > 3 * len(files) and sum(map(len, defs)) <= sum(map(len, files))
    assert cfg.sentence_mode == "code"
