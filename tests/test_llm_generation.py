"""Generation with a KV cache: padding never changes a log-prob, EOS stops a row, the sampler's
log-probs equal a full forward pass; models load from a local transformers directory."""
import pytest
import torch

from proximo.errors import ProximoError
from proximo.llm.generation import generate, pad_prompts, response_logprobs
from proximo.llm.models import load_model
from proximo.llm.tokenizer import CharTokenizer, HFTokenizer


def _prompts(tok):
    return [tok.encode(t, add_bos=True) for t in ("7+5=", "123+456=", "99+1=", "4+4=")]


@pytest.mark.parametrize("builtin", ["tiny", "tiny-llama"])
def test_padding_does_not_change_logprobs(builtin):
    torch.manual_seed(0)
    model, tok, _ = load_model(builtin, seed=0)
    model.eval()
    prompts = _prompts(tok)
    ids, mask = pad_prompts(prompts, tok.pad_id)
    assert (mask == 0).any(), "the batch must contain left padding for this test to mean anything"
    rollout = generate(model, ids, mask, 6, tok.eos_id, tok.pad_id, temperature=1.0)
    width = ids.shape[1]
    with torch.inference_mode():
        full, _, _ = response_logprobs(model, rollout.input_ids, rollout.attention_mask, width)
    rm = rollout.response_mask.bool()
    # the sampler's cached log-probs equal those of one full forward pass
    assert torch.allclose(full[rm], rollout.logprobs[rm], atol=1e-5)
    for row, prompt in enumerate(prompts):
        alone_ids, alone_mask = pad_prompts([prompt], tok.pad_id)
        n = int(rollout.response_mask[row].sum())
        seq = torch.cat([alone_ids, rollout.response_ids[row:row + 1, :n]], 1)
        seq_mask = torch.cat([alone_mask, rollout.response_mask[row:row + 1, :n]], 1)
        with torch.inference_mode():
            alone, _, _ = response_logprobs(model, seq, seq_mask, alone_ids.shape[1])
        assert torch.allclose(alone[0], full[row, :n], atol=1e-5)
        # greedy decoding of the prompt alone gives the same tokens as inside the padded batch
    greedy_batch = generate(model, ids, mask, 6, tok.eos_id, tok.pad_id, greedy=True)
    for row, prompt in enumerate(prompts):
        alone_ids, alone_mask = pad_prompts([prompt], tok.pad_id)
        greedy_alone = generate(model, alone_ids, alone_mask, 6, tok.eos_id, tok.pad_id, greedy=True)
        n = int(greedy_alone.response_mask.sum())
        assert torch.equal(greedy_alone.response_ids[0, :n], greedy_batch.response_ids[row, :n])
        assert torch.allclose(greedy_alone.logprobs[0, :n], greedy_batch.logprobs[row, :n], atol=1e-5)


def test_generation_stops_after_eos_and_masks_the_rest():
    model, tok, _ = load_model("tiny", seed=1)
    # Make <eos> overwhelmingly likely so every row stops at its first token.
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.transformer.wte.weight[tok.eos_id] = 0.0
        model.lm_head.weight[tok.eos_id] = 0.0
    bias_model = model
    ids, mask = pad_prompts(_prompts(tok), tok.pad_id)
    with torch.no_grad():
        bias_model.lm_head.weight.copy_(torch.zeros_like(bias_model.lm_head.weight))
    # all logits equal: sampling is uniform; check the invariant on many samples instead
    rollout = generate(model, ids, mask, 8, tok.eos_id, tok.pad_id)
    for row in range(rollout.response_ids.shape[0]):
        tokens = rollout.response_ids[row].tolist()
        real = rollout.response_mask[row].tolist()
        if tok.eos_id in tokens:
            stop = tokens.index(tok.eos_id)
            assert real[:stop + 1] == [1] * (stop + 1)
            assert all(v == 0 for v in real[stop + 1:])
            assert all(t == tok.pad_id for t in tokens[stop + 1:])
        else:
            assert all(real)
    assert rollout.logprobs[rollout.response_mask == 0].abs().sum() == 0


def test_char_tokenizer_round_trip_and_bad_characters():
    tok = CharTokenizer()
    ids = tok.encode("12+34=", add_bos=True)
    assert ids[0] == tok.bos_id
    assert tok.decode(ids[1:] + [tok.eos_id] + ids[1:]) == "12+34="
    with pytest.raises(ProximoError, match="not in the tokenizer"):
        tok.encode("12*3")


def _hf_char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for char in "0123456789+=":
        vocab[char] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def test_load_local_transformers_directory(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    hf_tok = _hf_char_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(hf_tok), n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0))
    model.eval()  # GPT2Config's default dropout is 0.1
    model.save_pretrained(tmp_path, safe_serialization=True)
    hf_tok.save_pretrained(tmp_path)
    loaded, tok, directory = load_model(tmp_path)
    assert isinstance(tok, HFTokenizer) and directory == tmp_path
    assert tok.encode("12+3=") == [vocab_id for vocab_id in hf_tok.encode("12+3=", add_special_tokens=False)]
    ids, mask = pad_prompts([tok.encode("1+2=", add_bos=True)], tok.pad_id)
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    # one GRPO step on the loaded directory with a user reward
    from proximo.llm import GRPO
    trainer = GRPO(tmp_path, reward_fn=lambda p, c: [float(len(x)) for x in c], prompts=["1+2=", "3+4="],
                   run_dir=tmp_path / "run", tensorboard=False, group_size=2, prompts_per_step=2,
                   max_new_tokens=4, num_eval_prompts=2)
    summary = trainer.train(1)
    assert summary["steps"] == 1


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ProximoError, match="unknown built-in model|neither a model directory"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ProximoError, match="neither a model directory"):
        load_model(tmp_path)


@pytest.mark.parametrize("builtin", ["tiny", "tiny-llama"])
def test_repeats_share_one_prefill_and_match_repeated_prompts(builtin):
    model, tok, _ = load_model(builtin, seed=3)
    ids, mask = pad_prompts(_prompts(tok), tok.pad_id)
    # greedy: the shared prefill gives exactly the tokens of prefilling every repeated prompt
    shared = generate(model, ids, mask, 6, tok.eos_id, tok.pad_id, greedy=True, repeats=3)
    long_way = generate(model, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), 6, tok.eos_id,
                        tok.pad_id, greedy=True)
    assert torch.equal(shared.prompt_ids, long_way.prompt_ids) and torch.equal(shared.prompt_mask, long_way.prompt_mask)
    assert torch.equal(shared.response_ids, long_way.response_ids)
    assert torch.allclose(shared.logprobs, long_way.logprobs, atol=1e-6)
    # sampled: rows of a group differ, and each row's log-probs are those of a full forward pass
    sampled = generate(model, ids, mask, 6, tok.eos_id, tok.pad_id, repeats=8,
                       generator=torch.Generator().manual_seed(0))
    assert sampled.response_ids.shape[0] == 4 * 8
    assert not all(torch.equal(sampled.response_ids[0], sampled.response_ids[r]) for r in range(1, 8))
    with torch.inference_mode():
        full, _, _ = response_logprobs(model, sampled.input_ids, sampled.attention_mask, ids.shape[1])
    rm = sampled.response_mask.bool()
    assert torch.allclose(full[rm], sampled.logprobs[rm], atol=1e-5)
    with pytest.raises(ProximoError, match="repeats"):
        generate(model, ids, mask, 6, tok.eos_id, tok.pad_id, repeats=0)


@pytest.mark.parametrize("builtin", ["tiny", "tiny-llama"])
def test_shared_prompt_forward_equals_the_long_way_in_values_and_gradients(builtin):
    from proximo.llm.models import ScalarHead, hidden_size
    model, tok, _ = load_model(builtin, seed=4)
    ids, mask = pad_prompts(_prompts(tok), tok.pad_id)
    rollout = generate(model, ids, mask, 5, tok.eos_id, tok.pad_id, repeats=4,
                       generator=torch.Generator().manual_seed(1))
    groups = torch.arange(4).repeat_interleave(4)
    # a shuffled subset, as a minibatch would be, with groups cut into pieces
    rows = torch.randperm(16, generator=torch.Generator().manual_seed(2))[:11]
    inputs = (rollout.input_ids[rows], rollout.attention_mask[rows], ids.shape[1])
    response_mask = rollout.response_mask[rows].float()
    weights = torch.randn(response_mask.shape, generator=torch.Generator().manual_seed(3))
    head = ScalarHead(hidden_size(model), init_std=0.1)
    results = []
    for labels in (None, groups[rows]):
        model.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        logp, entropy, values = response_logprobs(model, *inputs, temperature=0.7, with_entropy=True, head=head,
                                                  groups=labels)
        ((logp + 0.1 * entropy + values) * weights * response_mask).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in list(model.parameters()) + list(head.parameters())])
        results.append((logp.detach(), entropy.detach(), values.detach(), grads))
    (logp_a, ent_a, val_a, grad_a), (logp_b, ent_b, val_b, grad_b) = results
    real = response_mask.bool()
    assert torch.allclose(logp_a[real], logp_b[real], atol=1e-6)
    assert torch.allclose(ent_a[real], ent_b[real], atol=1e-6)
    assert torch.allclose(val_a[real], val_b[real], atol=1e-6)
    assert grad_a.abs().max() > 1e-2  # the gradient is not trivially zero
    assert torch.allclose(grad_a, grad_b, atol=1e-6 * float(grad_a.abs().max()) * 10)
    # rows labelled as one group must share their prompt
    bad = torch.zeros(16, dtype=torch.long)
    with pytest.raises(ProximoError, match="different prompts"):
        response_logprobs(model, rollout.input_ids, rollout.attention_mask, ids.shape[1], groups=bad)


def test_models_without_row_copying_caches_take_the_long_way(monkeypatch):
    import proximo.llm.generation as generation
    model, tok, _ = load_model("tiny", seed=5)
    ids, mask = pad_prompts(_prompts(tok), tok.pad_id)
    shared = generate(model, ids, mask, 5, tok.eos_id, tok.pad_id, greedy=True, repeats=2)
    groups = torch.arange(4).repeat_interleave(2)
    with torch.inference_mode():
        fast, _, _ = response_logprobs(model, shared.input_ids, shared.attention_mask, ids.shape[1], groups=groups)
    monkeypatch.setattr(generation, "_ROW_COPY_MODEL_TYPES", frozenset())
    assert not generation._cache_can_copy_rows(model)
    slow = generate(model, ids, mask, 5, tok.eos_id, tok.pad_id, greedy=True, repeats=2)
    assert torch.equal(slow.response_ids, shared.response_ids) and torch.equal(slow.prompt_ids, shared.prompt_ids)
    with torch.inference_mode():
        long_way, _, _ = response_logprobs(model, slow.input_ids, slow.attention_mask, ids.shape[1], groups=groups)
    real = slow.response_mask.bool()
    assert torch.allclose(fast[real], long_way[real], atol=1e-6)
