"""Batched sampling with a KV cache, and the log-probs of responses under a model.

Layout used everywhere on the LLM side: a prompt batch is left-padded to [B, P] (so every prompt ends
at column P-1 and generation appends in lockstep), a response batch is right-padded to [B, R] (tokens
after <eos> are padding). Positions count only real tokens, so padding never changes a log-prob.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from proximo.llm.models import forward_hidden, position_ids_from_mask


@dataclass
class Rollout:
    """Prompts [B, P] (left-padded), sampled responses [B, R] (right-padded) and their masks."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor          # [B, R] log-probs of the sampled tokens at the sampling temperature

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt and response side by side: [B, P + R]."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """Mask of real tokens in input_ids: [B, P + R]."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)


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
             eos_id: int, pad_id: int, temperature: float = 1.0, greedy: bool = False,
             generator: torch.Generator | None = None) -> Rollout:
    """Sample up to max_new_tokens per left-padded prompt [B, P], reusing the KV cache; a row stops
    after its <eos>. Returns a Rollout whose logprobs are those of the sampled tokens."""
    with torch.inference_mode():
        tokens, mask, logprobs = _sample(model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id,
                                         temperature, greedy, generator)
    # Cloned outside inference mode so that training code may use them next to autograd tensors.
    return Rollout(prompt_ids.clone(), prompt_mask.long().clone(), tokens.clone(), mask.clone(), logprobs.clone())


def _sample(model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, temperature, greedy, generator):
    batch = prompt_ids.shape[0]
    mask = prompt_mask.long()
    positions = position_ids_from_mask(mask)
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past = out.past_key_values
    next_logits = out.logits[:, -1, :]
    next_position = positions[:, -1:] + 1
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long)
    logprobs = torch.zeros((batch, max_new_tokens))
    alive_mask = torch.zeros((batch, max_new_tokens), dtype=torch.long)
    alive = torch.ones(batch, dtype=torch.bool)
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
        alive = alive & (token != eos_id)
        if not bool(alive.any()) or step == max_new_tokens - 1:
            break
        # Finished rows keep stepping with a masked pad token; masking keeps them out of every later key.
        mask = torch.cat([mask, alive_mask[:, step:step + 1]], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                    past_key_values=past, use_cache=True)
        past = out.past_key_values
        next_logits = out.logits[:, -1, :]
        next_position = next_position + 1
    return tokens[:, :length], alive_mask[:, :length], logprobs[:, :length]


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                      temperature: float = 1.0, with_entropy: bool = False, head=None):
    """Log-probs [B, R] of the response tokens input_ids[:, P:] under model (P = prompt_width), with
    the per-token entropy (nats) of the full next-token distribution [B, R] and head values [B, R] when
    asked (else None)."""
    logits, hidden = forward_hidden(model, input_ids, attention_mask)
    # The logit at position t predicts token t + 1: responses start at P, so use P-1 .. L-2.
    logits = logits[:, prompt_width - 1:-1, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    targets = input_ids[:, prompt_width:]
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    values = head(hidden[:, prompt_width - 1:-1, :]).float() if head is not None else None
    return logp, entropy, values
