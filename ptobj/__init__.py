"""ptobj: pretraining objectives as data transforms, megatron-core models and Triton masked attention.

The parts, each a subpackage:

* :mod:`ptobj.objectives`: every objective as a pure, seeded numpy transform (numpy only);
* :mod:`ptobj.data_pipeline`: corpus -> tokenizer -> indexed dataset -> samples -> batches;
* :mod:`ptobj.models`: megatron-core decoders and encoders, objective heads, Hugging Face export;
* :mod:`ptobj.kernels`: row-interval masked attention (Triton, FlexAttention, torch reference);
* :mod:`ptobj.recipes`: the training engine, evaluation, export, post-training and experiments.

The command line is ``ptobj`` (:mod:`ptobj.cli`). Importing this package imports nothing else.
"""

__version__ = "0.2.0"
