"""Batched sampling with a KV cache, and the log-probs of responses under a model.

Layout used everywhere on the LLM side: a prompt batch is left-padded to [B, P] (so every prompt ends
at column P-1 and generation appends in lockstep), a response batch is right-padded to [B, R] (tokens
after <eos> are padding). Positions count only real tokens, so padding never changes a log-prob.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from proximo.errors import ProximoError
from proximo.llm.models import forward_hidden, position_ids_from_mask


@dataclass
class Rollout:
    """Prompts [B, P] (left-padded), sampled responses [B, R] (right-padded) and their masks."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor          # [B, R] log-probs of the sampled tokens at the sampling temperature, the
                                    # sampler's own (an outside engine's: what the off-policy correction reads)
    policy_version: torch.Tensor | None = None  # [B] the learner version (updates done) each row's sampler
                                                # had; None: the current one (the built-in sampler's case)
    attention: torch.Tensor | None = None   # [B, R] every real response token, the environment's too (multi-turn:
                                            # attended to, never trained on); None: the same as response_mask

    @property
    def response_attention(self) -> torch.Tensor:
        """Mask of real response tokens [B, R] (policy and environment); response_mask marks the policy's."""
        return self.response_mask if self.attention is None else self.attention

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt and response side by side: [B, P + R]."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """Mask of real tokens in input_ids: [B, P + R]."""
        return torch.cat([self.prompt_mask, self.response_attention], dim=1)


    def select(self, rows: torch.Tensor) -> "Rollout":
        """The rollout of the given row indices [K]."""
        return Rollout(self.prompt_ids[rows], self.prompt_mask[rows], self.response_ids[rows],
                       self.response_mask[rows], self.logprobs[rows],
                       None if self.policy_version is None else self.policy_version[rows],
                       None if self.attention is None else self.attention[rows])


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Rollouts stacked row-wise: prompts left-padded and responses right-padded to the widest part."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.prompt_ids.shape[1] for p in parts)
    length = max(p.response_ids.shape[1] for p in parts)

    def left(x, value):
        return F.pad(x, (width - x.shape[1], 0), value=value)

    def right(x, value):
        return F.pad(x, (0, length - x.shape[1]), value=value)
    return Rollout(torch.cat([left(p.prompt_ids, pad_id) for p in parts]),
                   torch.cat([left(p.prompt_mask, 0) for p in parts]),
                   torch.cat([right(p.response_ids, pad_id) for p in parts]),
                   torch.cat([right(p.response_mask, 0) for p in parts]),
                   torch.cat([right(p.logprobs, 0.0) for p in parts]),
                   _versions(parts),
                   None if all(p.attention is None for p in parts)
                   else torch.cat([right(p.response_attention, 0) for p in parts]))


def _versions(parts: list[Rollout]) -> torch.Tensor | None:
    """The rows' policy versions of stacked rollouts (None when no part has them). A part without versions
    was sampled by the current policy: its rows get the largest version, which no staleness bound drops."""
    if all(p.policy_version is None for p in parts):
        return None
    now = torch.iinfo(torch.long).max
    return torch.cat([p.policy_version.long() if p.policy_version is not None
                      else torch.full((p.response_ids.shape[0],), now, dtype=torch.long) for p in parts])


def pad_prompts(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into (ids [B, P], mask [B, P])."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
    return ids, mask


def pad_responses(responses: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into (ids [B, R], mask [B, R])."""
    width = width or max(1, max(len(r) for r in responses))
    ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(responses), width), dtype=torch.long)
    for row, response in enumerate(responses):
        response = response[:width]
        if response:
            ids[row, :len(response)] = torch.tensor(response, dtype=torch.long)
            mask[row, :len(response)] = 1
    return ids, mask


def generate(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
             eos_id: int | Sequence[int], pad_id: int, temperature: float = 1.0, greedy: bool = False,
             generator: torch.Generator | None = None, repeats: int = 1) -> Rollout:
    """Sample up to max_new_tokens per left-padded prompt [B, P], reusing the KV cache; a row stops
    after its <eos> (eos_id: one id, or several stop ids such as a tokenizer's stop_ids). With repeats > 1
    each prompt is sampled repeats times (rows: prompt 0 repeats times, then prompt 1, ...;
    [B * repeats, ...]) from one shared prefill of the prompt. Returns a Rollout whose logprobs are those
    of the sampled tokens."""
    if repeats < 1:
        raise ProximoError(f"repeats must be at least 1, got {repeats}")
    # Generation runs where the model lives; callers hand over host tensors.
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    with torch.inference_mode():
        tokens, mask, logprobs = _sample(model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id,
                                         temperature, greedy, generator, repeats)
    if repeats > 1:
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(repeats, 0), prompt_mask.repeat_interleave(repeats, 0)
    # Cloned outside inference mode so that training code may use them next to autograd tensors.
    return Rollout(prompt_ids.clone(), prompt_mask.long().clone(), tokens.clone(), mask.clone(), logprobs.clone())


def stop_tensor(eos_id: int | Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """The stop ids as a tensor: a 0-d one for a single id (the fast compare), else 1-d."""
    if isinstance(eos_id, int):
        return torch.tensor(eos_id, device=device)
    ids = [int(i) for i in eos_id]
    if not ids:
        raise ProximoError("generation needs at least one stop (eos) id")
    return torch.tensor(ids[0] if len(ids) == 1 else ids, device=device)


def _sample(model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, temperature, greedy, generator,
            repeats=1):
    mask = prompt_mask.long()
    if repeats > 1 and not _cache_can_copy_rows(model):
        # A model whose cache cannot copy rows gets every repeated prompt prefilled (same result, slower).
        prompt_ids, mask, repeats = prompt_ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0), 1
    positions = position_ids_from_mask(mask)
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past = out.cache
    next_logits = out.logits[:, -1, :]
    if repeats > 1:
        # The prompt's keys and values are the same for every sample of it: prefill once, then copy
        # the cache rows instead of running the prompt through the model repeats times.
        past.batch_repeat_interleave(repeats)
        next_logits = next_logits.repeat_interleave(repeats, 0)
        mask, positions = mask.repeat_interleave(repeats, 0), positions.repeat_interleave(repeats, 0)
    batch, device = mask.shape[0], mask.device
    next_position = positions[:, -1:] + 1
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, max_new_tokens), device=device)
    alive_mask = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=device)
    alive = torch.ones(batch, dtype=torch.bool, device=device)
    stops = stop_tensor(eos_id, device)
    length = 0
    for step in range(max_new_tokens):
        logp = F.log_softmax(next_logits.float() / (1.0 if greedy else temperature), dim=-1)
        if greedy:
            token = logp.argmax(-1)
        else:
            token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        token = torch.where(alive, token, torch.full_like(token, pad_id))
        tokens[:, step] = token
        logprobs[:, step] = torch.where(alive, logp.gather(-1, token[:, None]).squeeze(-1), 0.0)
        alive_mask[:, step] = alive.long()
        length = step + 1
        alive = alive & (token != stops if stops.dim() == 0 else ~torch.isin(token, stops))
        if not bool(alive.any()) or step == max_new_tokens - 1:
            break
        # Finished rows keep stepping with a masked pad token; masking keeps them out of every later key.
        mask = torch.cat([mask, alive_mask[:, step:step + 1]], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                    cache=past, use_cache=True)
        past = out.cache
        next_logits = out.logits[:, -1, :]
        next_position = next_position + 1
    return tokens[:, :length], alive_mask[:, :length], logprobs[:, :length]


class Sampler:
    """How rollouts are generated. The built-in KVCacheSampler samples from the live policy; an outside
    engine (vLLM, say) holds its own copy of the weights, receives them in sync_weights before each
    step's rollouts, and sets exact_logprobs False: the trainers then recompute the old policy's log-probs
    with their own forward pass, and GRPO's off-policy correction (offpolicy_correction) weights the loss by
    exp(learner's - sampler's) log-probs of the Rollout. A generator that runs versions behind the learner
    sets Rollout.policy_version; GRPO's max_staleness drops rows too old.

    A pipelined engine (pipelined True, as proximo.llm.async_sampler.AsyncProcessSampler) is handed the next
    step's prompts through prefetch() while the learner updates, and reads policy_version, which the trainer
    sets before each sync_weights(): the learner version (updates done) of the weights handed over."""

    exact_logprobs = True
    pipelined = False          # prefetch() starts on a later generate(): the trainer draws prompts a step ahead
    policy_version = 0         # set by the trainer before sync_weights(): the version of the weights handed over
    last_seconds: float | None = None  # the engine's own seconds for the last generate() (None: the call's time)

    def generate(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                 eos_id: int | Sequence[int], pad_id: int, temperature: float = 1.0, repeats: int = 1) -> Rollout:
        """A Rollout of repeats samples per left-padded prompt [B, P] (rows grouped by prompt); a row ends
        at its first stop id (eos_id: one id or several)."""
        raise NotImplementedError

    def sync_weights(self, model) -> None:
        """Make the engine sample from model's current weights (nothing to do for the live model)."""

    def prefetch(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                 eos_id: int | Sequence[int], pad_id: int, temperature: float = 1.0, repeats: int = 1) -> None:
        """Start on the rollout a later generate() with the same arguments will ask for (pipelined engines;
        nothing for the others)."""

    def close(self) -> None:
        """Release what the engine holds (a process, a server connection); generate() may start it again."""


class KVCacheSampler(Sampler):
    """The built-in sampler: proximo's batched KV-cache generate() on the policy itself."""

    def generate(self, model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, temperature=1.0,
                 repeats=1) -> Rollout:
        """generate() with one shared prefill per prompt."""
        return generate(model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, temperature=temperature,
                        repeats=repeats)


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                      temperature: float = 1.0, with_entropy: bool = False, head=None,
                      groups: torch.Tensor | None = None):
    """Log-probs [B, R] of the response tokens input_ids[:, P:] under model (P = prompt_width), with
    the per-token entropy (nats) of the full next-token distribution [B, R] and head values [B, R] when
    asked (else None). groups [B] (optional) labels rows whose prompt columns are identical (a GRPO
    group): each group's prompt then runs through the model once and its keys/values are shared."""
    if groups is None:
        hidden = _response_hidden(model, input_ids, attention_mask, prompt_width)
    else:
        hidden = _response_hidden_shared(model, input_ids, attention_mask, prompt_width, groups)
    # The output layer runs only on the R positions that predict response tokens, not on the prompt.
    logits = model.get_output_embeddings()(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    targets = input_ids[:, prompt_width:]
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    values = head(hidden).float() if head is not None else None
    return logp, entropy, values


def _response_hidden(model, input_ids, attention_mask, prompt_width):
    """Last hidden states [B, R, H] at positions P-1 .. L-2, the ones that predict the response tokens."""
    # The last token predicts nothing we score, and a causal model's earlier outputs do not depend on
    # it: leave it out of the forward pass (one position in P + R less to compute).
    _, hidden = forward_hidden(model, input_ids[:, :-1], attention_mask[:, :-1], with_logits=False)
    return hidden[:, prompt_width - 1:, :]


def _response_hidden_shared(model, input_ids, attention_mask, prompt_width, groups):
    """_response_hidden with each group's prompt computed once: the prompt of one row per group runs
    with a KV cache, the cache rows are gathered back to [B, ...], then the responses run on top."""
    width = prompt_width
    if groups.shape != input_ids.shape[:1]:
        raise ProximoError(f"groups must have one label per row, shape {tuple(input_ids.shape[:1])}; "
                           f"got {tuple(groups.shape)}")
    if not _cache_can_copy_rows(model):
        return _response_hidden(model, input_ids, attention_mask, prompt_width)
    _, inverse = torch.unique(groups, return_inverse=True)
    first = torch.empty(int(inverse.max()) + 1, dtype=torch.long).scatter_(
        0, inverse, torch.arange(len(inverse)))
    if not (torch.equal(input_ids[first][inverse, :width], input_ids[:, :width])
            and torch.equal(attention_mask[first][inverse, :width], attention_mask[:, :width])):
        raise ProximoError("rows labelled as one group have different prompts; a group must share its prompt "
                           "(pass groups=None to run every row's prompt)")
    positions = position_ids_from_mask(attention_mask)
    prompt = model.base_model(input_ids=input_ids[first, :width], attention_mask=attention_mask[first, :width],
                              position_ids=positions[first, :width], use_cache=True)
    last = prompt.last_hidden_state[inverse, -1:, :]
    if input_ids.shape[1] - 1 == width:
        return last
    past = prompt.cache
    # Indexing keeps the graph: each prompt's keys/values receive the gradient of all its rows.
    past.batch_select_indices(inverse)
    rest = model.base_model(input_ids=input_ids[:, width:-1], attention_mask=attention_mask[:, :-1],
                            position_ids=positions[:, width:-1], cache=past, use_cache=True)
    return torch.cat([last, rest.last_hidden_state], dim=1)


def _cache_can_copy_rows(model) -> bool:
    """True for transformers models whose default KV cache (DynamicCache) can repeat and gather batch rows."""
    from transformers.cache_utils import DynamicCache
    return (getattr(getattr(model, "config", None), "model_type", "") in _ROW_COPY_MODEL_TYPES
            and hasattr(DynamicCache, "batch_repeat_interleave") and hasattr(DynamicCache, "batch_select_indices"))


# Families whose shared-prompt path is tested against the long way (tests/test_llm_generation.py);
# others run every prompt row, which is always correct, only slower. Add a family with a test.
_ROW_COPY_MODEL_TYPES = frozenset({"gpt2", "llama"})
