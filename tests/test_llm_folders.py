"""Model folders as users have them, built here from configs (no download): weights sharded by
save_pretrained (model-0000K-of-0000N.safetensors + model.safetensors.index.json), a SentencePiece
tokenizer.model without a pad token and with its chat template inside tokenizer_config.json (the Llama-2 /
Mistral layout), a tokenizer.json with chat_template.jinja, and generation_config.json naming a second stop
token. Each loads, trains a GRPO step from the CLI and is scored by `llm eval`; a damaged folder is one
line and exit 2, and no weight file is ever unpickled."""
import json
import random
import shutil

import pytest
import torch

from proximo.cli import main
from proximo.llm.data import render_prompt
from proximo.llm.generation import generate, pad_prompts
from proximo.llm.models import load_model, weights_files
from proximo.llm.tasks import get_task

pytest.importorskip("tokenizers", reason="the llm extra (tokenizers via transformers) is not installed")

TASK = get_task("add", 2)
QUIET = ["--quiet", "--no-tensorboard"]
SMALL = dict(hidden=32, layers=2, heads=2, vocab_size=400)


def _texts():
    return [f"{p}{TASK.answer(p)}" for p in TASK.sample_prompts(random.Random(0), 1500)]


def _chat_prompts(path, n, seed=0):
    rows = [{"prompt": [{"role": "user", "content": p}], "answer": TASK.answer(p)}
            for p in TASK.sample_prompts(random.Random(seed), n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sharded_spm(tmp_path_factory):
    """A Llama with SentencePiece tokenizer.model (no pad token) and its weights in 40 KB shards."""
    pytest.importorskip("sentencepiece", reason="the llm extra's sentencepiece is not installed")
    from proximo.llm.modeldir import make_model_dir
    return make_model_dir(tmp_path_factory.mktemp("spm") / "llama2-like", _texts(), family="llama",
                          tokenizer="sentencepiece", max_shard_size="40KB", **SMALL)


def test_sharded_sentencepiece_folder_loads_trains_and_is_evaluated(sharded_spm, tmp_path, capsys):
    from safetensors.torch import load_file
    folder = sharded_spm
    shards = weights_files(folder)
    assert len(shards) > 2 and (folder / "model.safetensors.index.json").is_file()
    assert not (folder / "model.safetensors").exists() and not (folder / "tokenizer.json").exists()
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["pad_token"] is None and "[INST]" in tokenizer_config["chat_template"]

    model, tokenizer, _ = load_model(folder)
    # every tensor comes from its shard, none left at a fresh initialization
    stored = {k: v for shard in shards for k, v in load_file(str(shard)).items()}
    assert set(stored) <= set(model.state_dict()) and all(torch.equal(model.state_dict()[k], v)
                                                          for k, v in stored.items())
    assert type(tokenizer.tok).__name__ == "LlamaTokenizer" and tokenizer.pad_id == tokenizer.eos_id
    text = render_prompt([{"role": "user", "content": "12+34="}], tokenizer)
    assert text == "<s>[INST] 12+34= [/INST]"  # the template in tokenizer_config.json
    ids = tokenizer.encode(text, add_bos=True)
    assert ids.count(tokenizer.bos_id) == 1 and tokenizer.decode(tokenizer.encode("46") + [tokenizer.eos_id]) == "46"

    data = _chat_prompts(tmp_path / "train.jsonl", 12)
    run = tmp_path / "run"
    assert main(["llm", "grpo", "--model", str(folder), "--dataset", str(data), "--eval-fraction", "0.25",
                 "--reward", "proximo:exact_match", "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                 "--max-new-tokens", "3", "--eval-every", "0", "--run-dir", str(run), *QUIET]) == 0
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    # llm eval scores the run's own held-out rows with its own reward: greedy is the run's last evaluation
    assert main(["llm", "eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"prompts: 3 the run's held-out rows of {data.resolve()} (eval_fraction 0.25, seed 1)" in out
    assert "accuracy (exact_match), mean over the scored samples:" in out
    assert f"greedy: {summary['after']['eval_greedy_accuracy']:.3f} (3 of 3 scored)" in out


def test_bpe_folder_with_chat_template_jinja_and_a_second_stop_token(tmp_path):
    from proximo.llm.modeldir import make_model_dir
    folder = make_model_dir(tmp_path / "mistral-like", _texts(), family="mistral", end_of_turn_stops=True, **SMALL)
    assert (folder / "chat_template.jinja").is_file() and (folder / "tokenizer.json").is_file()
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())
    model, tokenizer, _ = load_model(folder)
    end = tokenizer.tok.convert_tokens_to_ids("<|end|>")
    assert tokenizer.stop_ids == (tokenizer.eos_id, end)  # eos first, then generation_config.json's other id
    assert render_prompt([{"role": "user", "content": "1+2="}], tokenizer) == "<s><|user|>1+2=<|end|><|assistant|>"
    assert tokenizer.decode(tokenizer.encode("12") + [end] + tokenizer.encode("34")) == "12"

    # generation ends a row at the first of any stop id: take a token greedy decoding emits mid-row as a stop
    ids, mask = pad_prompts([tokenizer.encode("1+2=", add_bos=True), tokenizer.encode("33+4=", add_bos=True)],
                            tokenizer.pad_id)
    free = generate(model, ids, mask, 6, tokenizer.eos_id, tokenizer.pad_id, greedy=True)
    row = free.response_ids[0, :int(free.response_mask[0].sum())].tolist()
    stop = row[1] if len(row) > 1 else row[0]
    stopped = generate(model, ids, mask, 6, (tokenizer.eos_id, stop), tokenizer.pad_id, greedy=True)
    assert stopped.response_mask[0].sum() == row.index(stop) + 1 and stopped.response_ids[0, row.index(stop)] == stop


def _copy(folder, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def _missing_shard(folder):
    name = sorted(p.name for p in folder.glob("model-*.safetensors"))[1]
    (folder / name).unlink()
    return f"shard {name} (one of"


def _pickle_shard(folder):
    # A real torch pickle, named in the index: loading it would work, so only never opening it passes.
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[0]
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model-00001-of-00002.bin")
    index["weight_map"] = {k: "pytorch_model-00001-of-00002.bin" if v == victim else v
                           for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return "names shard pytorch_model-00001-of-00002.bin, a pickle file; proximo never unpickles"


def _pickle_renamed(folder):
    name = sorted(p.name for p in folder.glob("model-*.safetensors"))[0]
    torch.save({"x": torch.zeros(1)}, folder / name)
    return f"{name} is not a safetensors file"


def _bin_only(folder):
    for shard in folder.glob("model*.safetensors*"):
        shard.unlink()
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    return "holds only pickle weights (pytorch_model.bin); proximo loads only safetensors"


def _bad_stop(folder):
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 10 ** 6]}))
    return "generation_config.json: eos_token_id [2, 1000000] is not a token id"


@pytest.mark.parametrize("damage", [_missing_shard, _pickle_shard, _pickle_renamed, _bin_only, _bad_stop])
def test_damaged_folders_are_one_line_exit_2_and_never_unpickled(sharded_spm, tmp_path, capsys, monkeypatch,
                                                                  damage):
    folder = _copy(sharded_spm, tmp_path)
    message = damage(folder)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on a model folder")
    monkeypatch.setattr(torch, "load", refuse)
    assert main(["llm", "grpo", "--init", str(folder), "--steps", "1", "--run-dir", str(tmp_path / "run"),
                 *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_a_folder_saved_in_bf16_loads_as_float32_master_weights(tmp_path):
    """Published models are mostly saved in bf16 and transformers 5 would load them so; the policy's trained
    weights must be the optimizer's float32 master copy (frozen ones are cast down by the run's dtype)."""
    from proximo.llm.modeldir import make_model_dir
    folder = make_model_dir(tmp_path / "m", _texts()[:200], **SMALL)
    model, _, _ = load_model(folder)
    model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    shutil.copy(folder / "tokenizer.json", tmp_path / "bf16")
    shutil.copy(folder / "tokenizer_config.json", tmp_path / "bf16")
    loaded, _, _ = load_model(tmp_path / "bf16")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert all(torch.equal(a.float(), b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_a_lora_run_in_bf16_reads_its_frozen_base_in_bf16_and_trains_a_float32_adapter(tmp_path):
    from proximo.llm import GRPO
    from proximo.llm.modeldir import make_model_dir
    folder = make_model_dir(tmp_path / "m", _texts()[:200], **SMALL)
    reference, _, _ = load_model(folder)
    trainer = GRPO(folder, reward_fn=lambda p, c: [1.0] * len(c), prompts=["1+2="], lora_r=4, dtype="bfloat16",
                   device="cpu", group_size=2, prompts_per_step=1, num_minibatches=1, max_new_tokens=2,
                   num_eval_prompts=1, tensorboard=False, run_dir=tmp_path / "run")
    base = {n.replace("base_layer.", ""): p for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert {p.dtype for p in base.values()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}
    # the same values as reading float32 and casting down
    for name, value in reference.named_parameters():
        assert torch.equal(base[name], value.to(torch.bfloat16)), name
