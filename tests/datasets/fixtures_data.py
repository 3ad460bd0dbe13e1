"""Small indexed datasets with known token ids (no tokenizer needed): A uses ids 0..999, B uses
1000..1999; every document ends with the GPT-2 EOS id."""

import numpy
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

EOS = 50256


def write_dataset(prefix: str, low: int, num_docs: int, seed: int) -> list[list[int]]:
    rng = numpy.random.default_rng(seed)
    docs = [
        rng.integers(low, low + 1000, size=int(rng.integers(3, 60))).tolist() + [EOS]
        for _ in range(num_docs)
    ]
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    for doc in docs:
        builder.add_document(numpy.array(doc, dtype=numpy.uint16), [len(doc)])
    builder.finalize(prefix + ".idx")
    return docs
