"""Shared fixtures. ``tiny_corpus``: one small prepared corpus (a capped slice of the
standard library's code, a 512-piece tokenizer) reused by every recipe test."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# No wall-clock deadlines on property tests: speed is measured in bench/, never asserted here
# (a loaded machine made hypothesis' default 200 ms deadline fail tests that were correct).
settings.register_profile("project", deadline=None)
settings.load_profile("project")

# Without a GPU the Triton kernels run through Triton's interpreter. The variable must be
# set before the first `import triton` of the session, whichever test module gets there first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TINY_CORPUS = {"source": "stdlib-code", "max_bytes": 120_000, "valid_fraction": 0.2, "valid_documents": 0,
               "max_document_chars": 0}
TINY_TOKENIZER = {"vocab_size": 512, "max_training_sentences": 3000}


def pytest_configure(config):
    # megatron-core announces at import that Apex / Transformer Engine are absent; we use neither
    config.addinivalue_line("filterwarnings", r"ignore:.*(Apex|Transformer Engine).*:UserWarning")
    config.addinivalue_line("filterwarnings", r"ignore:full scope is deprecated:UserWarning")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """(CorpusConfig, TokenizerConfig, cache_dir) of a prepared tiny corpus."""
    from ptobj.data_pipeline.build import prepare_corpus
    from ptobj.data_pipeline.config import CorpusConfig, TokenizerConfig

    corpus, tokenizer = CorpusConfig(**TINY_CORPUS), TokenizerConfig(**TINY_TOKENIZER)
    cache = tmp_path_factory.mktemp("corpus_cache")
    prepare_corpus(corpus, tokenizer, cache, progress=False)
    return corpus, tokenizer, str(cache)
