"""The lm-evaluation-harness model ``sedd`` (lm-eval 0.4.x): SEDD checkpoints under ``lm_eval``.

- ``loglikelihood``: the conditional bound of :mod:`sedd_megatron.evaluation.conditional`
  (-complete bound: a lower bound on log p(continuation | context), docs/math.md §6.6).
  ``is_greedy``: every continuation token is the argmax of the model's one-step denoise from
  the fully noised continuation (context clean): the continuation's positions set to MASK
  (absorbing graph) or to a uniform draw (uniform graph), at the total noise sigma_bar(1); the
  prediction at a position is the token of largest concrete score (the current token scores 1).
- ``loglikelihood_rolling``: the document's tokens cut into non-overlapping windows of the
  model's length, as the ELBO harness cuts blocks (the last, shorter window is evaluated at its
  own length instead of dropped); each window is an unconditional bound, their sum the result.
- ``generate_until``: the sampler with the context as a clamped prefix (left-truncated to leave
  ``max_gen_toks`` positions), the generated tokens decoded and cut at the first ``until``
  string.

Importing this module imports lm_eval; :func:`register` adds ``sedd`` to its registry. Every
rank of a Megatron world makes the same calls and reports lm-eval rank 0 (lm-eval then lets
LOCAL_RANK 0 write the results).
"""

from __future__ import annotations

import contextlib
import os

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from sedd_megatron.checkpoint.opener import open_model, resolve_backend
from sedd_megatron.errors import EvalError
from sedd_megatron.evaluation.conditional import evaluate_conditional, total_bound
from sedd_megatron.evaluation.settings import DESIGNS, check_elbo_settings
from sedd_megatron.sampling.engine import Sampler, SamplingOptions
from sedd_megatron.sampling.prompts import Condition

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZERS = ("gpt2", "ids")


class IdsTokenizer:
    """Token ids written as text ("12 7 991"), for models without a text tokenizer."""

    eos_id = None

    def encode(self, text: str) -> list[int]:
        try:
            return [int(tok) for tok in text.replace(",", " ").split()]
        except ValueError:
            raise EvalError(
                f"tokenizer=ids: expected token ids as text, got {text[:60]!r}"
            ) from None

    def decode(self, ids) -> str:
        """ " 12 7 991": a continuation of token-id text starts with its delimiter."""
        return "".join(f" {int(i)}" for i in ids)  # each id after its delimiter, as in prompts


def _as_int(name, value, minimum):
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise EvalError(f"model arg {name} must be an integer, got {value!r}") from None
    if str(out) != str(value).strip() and not isinstance(value, int):
        raise EvalError(f"model arg {name} must be an integer, got {value!r}")
    if out < minimum:
        raise EvalError(f"model arg {name} must be >= {minimum}, got {out}")
    return out


def check_model_args(
    pretrained: str | None = None,
    backend: str = "auto",
    tp=1,
    pp=1,
    iteration=None,
    num_t_samples=100,
    design: str = "importance",
    replicates=None,
    tail_samples=None,
    t_eps=1e-3,
    seed=0,
    batch_size=32,
    dtype: str = "float32",
    steps=64,
    predictor: str = "analytic",
    tokenizer: str | None = None,
    append_eos=True,
    level=0.95,
    max_batch_size=None,
    device=None,
    **unknown,
) -> dict:
    """The model args of ``sedd``, checked and normalised (EvalError names the first bad one);
    nothing is opened. ``batch_size``: sequences per model call ('auto': 32);
    ``max_batch_size`` and ``device`` (lm-eval's) are accepted and unused."""
    if unknown:
        raise EvalError(f"unknown model arg(s) for sedd: {', '.join(sorted(unknown))}")
    if pretrained is None:
        raise EvalError("model arg pretrained=DIR is required (a SEDD checkpoint directory)")
    if not os.path.exists(str(pretrained)):
        raise EvalError(f"model arg pretrained: not found: {pretrained}")
    if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
        batch_size = 32
    out = {
        "pretrained": str(pretrained),
        "num_t_samples": _as_int("num_t_samples", num_t_samples, 2),
        "seed": _as_int("seed", seed, 0),
        "batch_size": _as_int("batch_size", batch_size, 1),
        "steps": _as_int("steps", steps, 1),
        "replicates": None if replicates in (None, "") else _as_int("replicates", replicates, 2),
        "tail_samples": (
            None if tail_samples in (None, "") else _as_int("tail_samples", tail_samples, 0)
        ),
        "tp": _as_int("tp", tp, 1),
        "pp": _as_int("pp", pp, 1),
        "iteration": None if iteration in (None, "") else _as_int("iteration", iteration, 0),
    }
    try:
        out["t_eps"], out["level"] = float(t_eps), float(level)
    except (TypeError, ValueError):
        raise EvalError(
            f"model args t_eps and level must be numbers: {t_eps!r}, {level!r}"
        ) from None
    if design not in DESIGNS:
        raise EvalError(f"model arg design must be one of {', '.join(DESIGNS)}, got {design!r}")
    if dtype not in DTYPES:
        raise EvalError(f"model arg dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if backend not in ("auto", "plain", "megatron"):
        raise EvalError(f"model arg backend must be auto, plain or megatron, got {backend!r}")
    if tokenizer is not None and tokenizer not in TOKENIZERS:
        raise EvalError(f"model arg tokenizer must be one of {', '.join(TOKENIZERS)}")
    if str(append_eos).lower() not in ("true", "false", "1", "0"):
        raise EvalError(f"model arg append_eos must be true or false, got {append_eos!r}")
    check_elbo_settings(
        num_t_samples=out["num_t_samples"],
        design=design,
        replicates=out["replicates"],
        t_eps=out["t_eps"],
        batch_size=out["batch_size"],
        level=out["level"],
        tail_samples=out["tail_samples"],
    )
    try:
        options = SamplingOptions(predictor=predictor, steps=out["steps"])
    except ValueError as err:
        raise EvalError(f"model arg predictor/steps: {err}") from None
    out.update(
        design=design,
        dtype=dtype,
        backend=backend,
        tokenizer=tokenizer,
        append_eos=str(append_eos).lower() in ("true", "1"),
        options=options,
    )
    return out


class SEDDLM(LM):
    """lm-eval model ``sedd`` (module docstring). Model args (:func:`check_model_args`):
    pretrained (plain directory or pretrain_sedd.py checkpoint), backend, tp, pp, iteration,
    num_t_samples, design, replicates, tail_samples, t_eps, seed, batch_size, dtype, steps,
    predictor, tokenizer (gpt2 | ids), append_eos (rolling: EOS after the document, as the
    ELBO harness), level."""

    def __init__(self, **model_args):
        super().__init__()
        a = check_model_args(**model_args)
        self.num_t_samples, self.seed, self.batch_size = (
            a["num_t_samples"],
            a["seed"],
            a["batch_size"],
        )
        self.steps, self.replicates, self.tail_samples = (
            a["steps"],
            a["replicates"],
            a["tail_samples"],
        )
        self.t_eps, self.level, self.design = a["t_eps"], a["level"], a["design"]
        self.append_eos, self.options = a["append_eos"], a["options"]
        pretrained, dtype = a["pretrained"], a["dtype"]
        try:
            backend = resolve_backend(pretrained, a["backend"])
        except ValueError as err:
            raise EvalError(f"model arg backend: {err}") from None
        if backend == "megatron":
            from sedd_megatron.runtime.distributed import world_layout  # lazy: imports Megatron

            if world_layout() != (a["tp"], a["pp"]):
                raise EvalError(
                    f"model args tp={a['tp']}, pp={a['pp']} need the Megatron world that "
                    f"tools/lm_eval_sedd.py starts (this one: {world_layout()})"
                )
            if dtype != "float32":
                raise EvalError("model arg dtype: the Megatron backend evaluates in float32")
        self.model = open_model(pretrained, backend, iteration=a["iteration"])
        self.dtype = DTYPES[dtype]  # plain: autocast around every model call (float32: none)
        self.tokenizer = self._tokenizer(a["tokenizer"])
        self.info = {
            "pretrained": pretrained,
            "backend": backend,
            "design": self.design,
            "num_t_samples": self.num_t_samples,
            "tail_samples": self.tail_samples,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "dtype": dtype,
            "steps": self.steps,
            "seq_length": self.model.seq_length,
        }
        self.bounds: list[dict] = []  # every request's bound, in the order of the calls

    def _tokenizer(self, name):
        if name is None:
            name = "gpt2" if self.model.num_tokens >= 50257 else "ids"
        if name not in TOKENIZERS:
            raise EvalError(f"model arg tokenizer must be one of {', '.join(TOKENIZERS)}")
        if name == "ids":
            return IdsTokenizer()
        from sedd_megatron.datasets.tokenizers import build_tokenizer  # lazy: only for gpt2

        if self.model.num_tokens < 50257:
            raise EvalError(
                f"tokenizer=gpt2 needs a model with >= 50257 tokens, this one has "
                f"{self.model.num_tokens} (use tokenizer=ids)"
            )
        return build_tokenizer("gpt2")

    # lm-eval's view of the layout: every rank evaluates every request (same calls)
    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    def get_model_info(self) -> dict:
        """Settings, and every request's bound with its confidence interval (in request order,
        per request type): what the results JSON carries under config.sedd."""
        return {"sedd": {**self.info, "confidence_level": self.level, "bounds": self.bounds}}

    @property
    def tokenizer_name(self) -> str:
        return type(self.tokenizer).__name__

    # --- requests ------------------------------------------------------------------------
    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids); trailing context spaces move to the continuation;
        the context is left-truncated to fit the model's length."""
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        enc = self.tokenizer.encode
        if isinstance(self.tokenizer, IdsTokenizer):
            ctx, cont = enc(context), enc(continuation)
        else:
            ctx = enc(context) if context else []
            whole = enc(context + continuation)
            cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else enc(continuation)
        if len(cont) > self.model.seq_length:
            raise EvalError(
                f"a continuation of {len(cont)} tokens exceeds the model's length "
                f"{self.model.seq_length}"
            )
        keep = self.model.seq_length - len(cont)
        return (ctx[-keep:] if keep else []), cont

    def _bounds(self, pairs):
        return evaluate_conditional(
            self.model,
            pairs,
            design=self.design,
            num_t_samples=self.num_t_samples,
            replicates=self.replicates,
            t_eps=self.t_eps,
            seed=self.seed,
            batch_size=self.batch_size,
            tail_samples=self.tail_samples,
        )

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.dtype)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        with self._autocast():
            return self._loglikelihood(requests)

    def _loglikelihood(self, requests):
        pairs = [self._split(*req.args) for req in requests]
        bounds = self._bounds(pairs)
        greedy = self._greedy(pairs)
        out = []
        for req, bound, g in zip(requests, bounds, greedy, strict=True):
            s = bound.summary(self.level)
            self.bounds.append({"request": "loglikelihood", **s})
            out.append((float(s["loglikelihood"]), bool(g)))
            self.cache_hook.add_partial("loglikelihood", req.args, out[-1])
        return out

    @torch.no_grad()
    def _greedy(self, pairs) -> list[bool]:
        """is_greedy of every request (module docstring): batched by total length."""
        graph, model = self.model.graph, self.model
        sigma_1 = float(model.noise(torch.tensor(1.0, dtype=torch.float64))[0])
        result = [False] * len(pairs)
        by_length: dict[int, list[int]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            by_length.setdefault(len(ctx) + len(cont), []).append(i)
        gen = torch.Generator().manual_seed(self.seed)
        for length in sorted(by_length):
            ids = by_length[length]
            for start in range(0, len(ids), self.batch_size):
                chunk = ids[start : start + self.batch_size]
                x0 = torch.tensor([pairs[i][0] + pairs[i][1] for i in chunk], dtype=torch.int64)
                where = torch.zeros_like(x0, dtype=torch.bool)
                for row, i in enumerate(chunk):
                    where[row, len(pairs[i][0]) :] = True
                x = torch.where(where, graph.sample_limit(*x0.shape, generator=gen), x0)
                sigma = torch.full((len(chunk),), sigma_1)
                log_score = model.full_log_score(x, sigma)[..., : graph.num_tokens].double()
                # the current token's concrete score is 1 (log 0)
                current = x.clamp_max(graph.num_tokens - 1)[..., None]
                is_data = (x < graph.num_tokens)[..., None]
                keep = log_score.gather(-1, current)
                src = torch.where(is_data, torch.zeros_like(keep), keep)
                log_score = log_score.scatter(-1, current, src)
                pred = log_score.argmax(-1)
                for row, i in enumerate(chunk):
                    result[i] = bool((pred[row][where[row]] == x0[row][where[row]]).all())
        return result

    def _windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        ids = self.tokenizer.encode(text)
        eos = getattr(self.tokenizer, "eos_id", None)
        if self.append_eos and eos is not None:
            ids = ids + [eos]
        n = self.model.seq_length
        return [([], ids[i : i + n]) for i in range(0, len(ids), n)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        with self._autocast():
            return self._loglikelihood_rolling(requests)

    def _loglikelihood_rolling(self, requests):
        windows, owner = [], []
        for k, req in enumerate(requests):
            for w in self._windows(req.args[0]):
                windows.append(w)
                owner.append(k)
        bounds = self._bounds(windows) if windows else []
        out = []
        for k, req in enumerate(requests):
            mine = [b for b, o in zip(bounds, owner, strict=True) if o == k]
            s = total_bound(mine, self.level)
            self.bounds.append({"request": "loglikelihood_rolling", **s, "windows": len(mine)})
            out.append(float(s["loglikelihood"]))
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, out[-1])
        return out

    def generate_until(self, requests, disable_tqdm: bool = False):
        with self._autocast():
            return self._generate_until(requests)

    def _generate_until(self, requests):
        n = self.model.seq_length
        sampler = Sampler(self.model, self.options)
        jobs = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kwargs.pop("max_gen_toks", 256))
            ctx = self.tokenizer.encode(context) if context else []
            room = max(1, min(max_gen, n - 1)) if ctx else min(max_gen, n)
            ctx = ctx[-(n - room) :] if n - room > 0 else []
            jobs.append((ctx, min(max_gen, n - len(ctx)), until))
        out = [None] * len(jobs)
        for start in range(0, len(jobs), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(jobs))))
            conds = [
                Condition(
                    torch.arange(len(jobs[i][0])), torch.tensor(jobs[i][0], dtype=torch.int64)
                )
                for i in chunk
            ]
            x = sampler.sample(conds, chunk, self.seed).cpu()
            for row, i in enumerate(chunk):
                ctx, max_gen, until = jobs[i]
                tokens = x[row, len(ctx) : len(ctx) + max_gen].tolist()
                text = self.tokenizer.decode(tokens)
                for stop in until:
                    if stop and stop in text:
                        text = text.split(stop, 1)[0]
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


def register() -> None:
    """Add ``sedd`` to lm-eval's model registry (idempotent)."""
    from lm_eval.api.registry import model_registry

    if "sedd" not in model_registry:
        register_model("sedd")(SEDDLM)
