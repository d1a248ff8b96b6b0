"""train_reward_model.py on the tiny model (the loss itself is checked by hand in test_losses.py):

- the offline pairs differ from the worked solution only in the last step and the boxed answer;
- a malformed pairs row fails before any model loads, naming file:line:field;
- a left-padded batch gives the same scores as each row alone (also a text ending in EOS == pad);
- a smoke run writes the whole run folder and drops and counts over-long pairs;
- final/ (merged) reproduces the trained adapter's scores, loads in plain Hugging Face with TRL's
  right padding, and loads in the stage-1 RewardModelScorer ("classifier") with the same scores;
  its score head differs from the one a fresh load draws (the head trained);
- the centring term pulls the mean score toward zero where plain Bradley-Terry leaves it;
- 4 steps straight == 2 steps + --resume + 2 steps (adapter weights and metrics rows).
"""
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_reward_model as trm
from pns_mini import data, runs
from pns_mini.data import DataError
from pns_mini.generation import left_pad
from pns_mini.modeling import load_model_and_tokenizer, position_ids_from_mask

TIMING = ("step_time_s",)


def write_pairs(path, n=16, long_one=True):
    """n arithmetic pairs in synthesize.py's layout (prompt = data.prompt_messages(q): system, the
    worked example, the question), plus one pair whose chosen side is far over the tests' max_length."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        prompt = data.prompt_messages(f"What is {a} + {b}?")
        rows.append({"prompt": prompt,
                     "chosen": [{"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."}],
                     "rejected": [{"role": "assistant", "content": f"{a} + {b} = {a + b + 1}. The answer is \\boxed{{{a + b + 1}}}."}]})
    if long_one:
        rows.append({**rows[0], "prompt": data.prompt_messages("What is 1 + 1?"),
                     "chosen": [{"role": "assistant", "content": "one plus one " * 150 + "= \\boxed{2}"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


def config(model, pairs, out, **overrides):
    base = dict(model=str(model), pairs=str(pairs), output_dir=str(out), eval_fraction=0.25, max_length=200,
                max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2, per_device_eval_batch_size=3,
                learning_rate=5e-3, warmup_steps=1, eval_steps=2, save_steps=2, lora_r=4, lora_alpha=8, device="cpu")
    return trm.Config(**{**base, **overrides})


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tiny_model_dir, pairs_file):
    cfg = config(tiny_model_dir, pairs_file, tmp_path_factory.mktemp("rm") / "run")
    return cfg, trm.main(cfg)


# ---------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------
def test_offline_pairs_alter_only_the_last_step_and_answer():
    pairs = trm.offline_pairs(30, seed=0)
    questions = {q["id"]: q["question"] for q in data.load_problems("offline", limit=30, seed=0)}
    assert {p["kind"] for p in pairs} == {"slip", "wrong_op"}
    for p in pairs:
        assert p["prompt"] == data.prompt_messages(questions[p["id"]])
        chosen, rejected = p["chosen"][0]["content"].split("\n"), p["rejected"][0]["content"].split("\n")
        assert data.last_boxed(p["chosen"][0]["content"]) == p["gold"]
        assert data.last_boxed(p["rejected"][0]["content"]) == p["rejected_answer"] != p["gold"]
        assert chosen[:-2] == rejected[:-2] and chosen[-2] != rejected[-2]  # earlier steps kept, last step altered


@pytest.mark.parametrize("line3, message", [
    ('{"prompt": "Q", "chosen": "A"}', "pairs.jsonl:3: missing field 'rejected'"),
    ('{"prompt": "Q", "chosen": "A", "rejected": ["B"]}', "pairs.jsonl:3: field 'rejected' must be a non-empty string"),
    ('{"chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "B"}]}',
     "pairs.jsonl:3: field 'chosen' must be \\[..., "),
    ('{"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "A"}], "rejected": []}',
     "pairs.jsonl:3: field 'rejected' must be \\[\\{\"role\": \"assistant\""),
    ('{"prompt": "Q", "chosen": "A", "rejected": "B"', "pairs.jsonl:3: not valid JSON"),
])
def test_malformed_row_names_file_line_and_field(tmp_path, line3, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "A", "rejected": "B"}\n\n' + line3 + "\n")  # line 2 is blank
    with pytest.raises(DataError, match=message):  # raised before any model is loaded
        trm.main(config("no-such-model", path, tmp_path / "run"))


def test_string_pairs_for_a_chat_model_are_refused(tmp_path, tiny_model_dir):
    # the scorers feed a trained reward model the chat form: a string-form pair would train it on other text
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "A", "rejected": "B"}\n')
    with pytest.raises(DataError, match="pairs.jsonl:1: a string-form pair for a model with a chat template"):
        trm.main(config(tiny_model_dir, path, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Scores do not depend on padding
# ---------------------------------------------------------------------------------------------
def test_padded_batch_gives_the_scores_of_unpadded_singles(tiny_model_dir):
    runs.seed_everything(0)
    model, tok = load_model_and_tokenizer(tiny_model_dir, num_labels=1, lora_r=4, device="cpu")
    model.eval()
    rows = [trm.encode(tok, [{"role": "user", "content": "What is 2 + 3?"}], [{"role": "assistant", "content": c}])
            for c in ("5", "It is 2 + 3 = 5, so the answer is five.")]
    rows.append(trm.encode(tok, "Q: 2 + 3?\nA: ", "6"))  # plain text: ends with EOS, which is also the pad token
    assert rows[-1][-1] == tok.eos_token_id == tok.pad_token_id and len({len(r) for r in rows}) == 3
    with torch.no_grad():
        batched = trm.score_rows(model, rows, tok.pad_token_id)  # (3,) left-padded
        singles = torch.cat([trm.score_rows(model, [r], tok.pad_token_id) for r in rows])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    assert batched.unique().numel() == 3  # three different texts, three different scores


def test_trained_and_scored_inputs_are_the_same_tokens(tiny_model_dir):
    """One pair as synthesize.py writes it: the tokens train_reward_model.py trains on, the tokens
    RewardModelScorer scores in stage 1 and synthesis, and TRL's RewardTrainer tokens are one row."""
    from trl.data_utils import _tokenize

    from pns_mini.scorers import RewardModelScorer
    model, tok = load_model_and_tokenizer(tiny_model_dir, num_labels=1, device="cpu")
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    solution = "Tom starts with 3 apples and buys 4 more, so he has 3 + 4 = 7 apples. The answer is \\boxed{7}."
    pair = {"prompt": data.prompt_messages(question), "chosen": [{"role": "assistant", "content": solution}],
            "chat_template_kwargs": {"enable_thinking": False}}
    trained = trm.encode(tok, pair["prompt"], pair["chosen"], pair["chat_template_kwargs"])
    scored = RewardModelScorer(model, tok, kind="classifier").rows([question], [solution])[0]
    trl_ids = _tokenize(tok, pair["prompt"] + pair["chosen"], tools=None, **pair["chat_template_kwargs"])["input_ids"]
    assert trained == scored == list(trl_ids)
    assert tok.decode(trained).count("<|im_start|>user") == 2  # the worked example and the question


# ---------------------------------------------------------------------------------------------
# A smoke run and its outputs
# ---------------------------------------------------------------------------------------------
def test_smoke_run_writes_the_run_folder(smoke):
    cfg, summary = smoke
    out = Path(cfg.output_dir)
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "summary.json", "report.md", "plots/score_hist.png",
                 "plots/loss.png", "adapter/adapter_config.json", "final/config.json", "checkpoints/step-6/trainer.pt"):
        assert (out / name).exists(), name
    # 17 pairs with 17 prompts: 4 prompts held out (round(0.25 * 17)); the over-long pair is dropped
    assert summary["pairs"]["dropped_too_long"] == 1 and summary["pairs"]["train"] + summary["pairs"]["eval"] == 16
    assert summary["pairs"]["eval"] in (3, 4) and summary["eval"]["pairs"] == summary["pairs"]["eval"]
    rows = runs.read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "accuracy", "score_mean", "margin_mean", "grad_norm", "lr"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [2, 4, 6]
    samples = runs.read_metrics(out / "samples.jsonl")
    assert len(samples) == summary["pairs"]["eval"] and all({"chosen_score", "rejected_score", "prompt", "chosen", "line"} <= s.keys() for s in samples)
    assert summary["eval"]["accuracy"] == pytest.approx(sum(s["chosen_score"] > s["rejected_score"] for s in samples) / len(samples))
    assert json.loads((out / "summary.json").read_text()) == summary
    with pytest.raises(DataError, match="already holds a run"):  # never mixes two runs in one folder
        trm.main(cfg)


def _scores(model, rows, pad_id):
    with torch.no_grad():
        return trm.score_rows(model.eval(), rows, pad_id)


def test_final_folder_reproduces_the_trained_scores(smoke, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    cfg, _ = smoke
    out = Path(cfg.output_dir)
    samples = runs.read_metrics(out / "samples.jsonl")
    final, tok = load_model_and_tokenizer(str(out / "final"), num_labels=1, device="cpu")
    adapter, _ = load_model_and_tokenizer(str(out / "adapter"), num_labels=1, device="cpu")
    assert final.config.pad_token_id == tok.pad_token_id and final.config.num_labels == 1
    rows = [trm.encode(tok, s["prompt"], s[side]) for s in samples for side in ("chosen", "rejected")]
    expected = torch.tensor([s[f"{side}_score"] for s in samples for side in ("chosen", "rejected")])
    torch.testing.assert_close(_scores(final, rows, tok.pad_token_id), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_scores(adapter, rows, tok.pad_token_id), expected, atol=1e-4, rtol=1e-4)

    # Any tool: plain HF from the folder, right-padded as TRL's collator does, no position ids.
    plain = AutoModelForSequenceClassification.from_pretrained(out / "final").eval()
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits[:, 0], expected, atol=1e-4, rtol=1e-4)

    # The score head trained: it differs from the head the same seed draws for a fresh model.
    runs.seed_everything(cfg.seed)
    fresh, _ = load_model_and_tokenizer(tiny_model_dir, num_labels=1, device="cpu")
    assert not torch.allclose(fresh.score.weight, final.score.weight)


def test_final_folder_loads_in_the_stage1_scorer(smoke):
    from pns_mini.scorers import RewardModelScorer

    cfg, _ = smoke
    out = Path(cfg.output_dir)
    samples = runs.read_metrics(out / "samples.jsonl")
    scorer = RewardModelScorer(*load_model_and_tokenizer(str(out / "final"), num_labels=1, device="cpu"), kind="classifier")
    # The pairs use synthesize.py's layout (data.prompt_messages(q), [assistant: completion]); the
    # scorer builds the same text from (question, completion), so it must give the same scores.
    questions = [s["prompt"][-1]["content"].split("\n")[0] for s in samples]
    assert all(s["prompt"] == data.prompt_messages(q) for s, q in zip(samples, questions))
    raw = scorer.raw(questions, [s["chosen"][0]["content"] for s in samples])
    assert raw == pytest.approx([s["chosen_score"] for s in samples], abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Centring
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def offset_model_dir(tmp_path_factory, tiny_model_dir, pairs_file):
    """The tiny model with a score head aimed at the mean last hidden state, so that every score
    starts near +5: a reward model whose scores have drifted. Bradley-Terry cannot see the offset."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    rows = [trm.encode(tok, p["prompt"], p[side]) for p in trm.load_pairs(pairs_file) for side in ("chosen", "rejected")]
    ids, mask = left_pad(rows, tok.pad_token_id)
    with torch.no_grad():
        h = model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).last_hidden_state
        mean_h = h[:, -1].mean(0)  # (H,) mean hidden state at the scored (last) token
        model.score.weight.copy_(5.0 * mean_h[None] / mean_h.dot(mean_h))
    path = tmp_path_factory.mktemp("offset-rm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_centring_pulls_the_mean_score_toward_zero(tmp_path, offset_model_dir, pairs_file):
    means = {}
    for coef in (0.0, 0.1):
        # lora_alpha = lora_r keeps the LoRA change small, so plain BT leaves the offset mostly in place
        cfg = config(offset_model_dir, pairs_file, tmp_path / f"c{coef}", center_rewards_coefficient=coef, max_steps=20,
                     learning_rate=2e-3, warmup_steps=0, lr_scheduler_type="constant", eval_steps=0, save_steps=0,
                     lora_alpha=4, per_device_train_batch_size=4, gradient_accumulation_steps=1)
        summary = trm.main(cfg)
        first = runs.read_metrics(tmp_path / f"c{coef}" / "metrics.jsonl")[0]
        assert first["score_mean"] == pytest.approx(5.0, abs=0.2)  # both runs start from the drifted head
        means[coef] = summary["train"]["score_mean"]  # the saved model on all training pairs
    assert abs(means[0.0]) > 1.0  # Bradley-Terry alone does not bring the scores back (here: +2.7)
    assert abs(means[0.1]) < 0.25 * abs(means[0.0])  # centred (here: -0.55 against +2.65)


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------
def test_resume_equals_straight_run(tmp_path, tiny_model_dir, pairs_file):
    # 12 training pairs, 4 per step (2 micro-batches of 2): step 4 crosses into the second
    # (reshuffled) epoch. Warmup of 3 steps then constant: a 2-step run's schedule is the first
    # half of a 4-step one, so "2, then --resume --max-steps 4" must replay the 4-step run.
    common = dict(max_steps=4, warmup_steps=3, lr_scheduler_type="constant", eval_steps=1, save_steps=2)
    trm.main(config(tiny_model_dir, pairs_file, tmp_path / "straight", **common))
    trm.main(config(tiny_model_dir, pairs_file, tmp_path / "resumed", **{**common, "max_steps": 2}))
    trm.main(config(tiny_model_dir, pairs_file, tmp_path / "resumed", **common, resume=True))

    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("score" in k for k in a)  # the score head is in the adapter
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    rows_a = [{k: v for k, v in r.items() if k not in TIMING} for r in runs.read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    rows_b = [{k: v for k, v in r.items() if k not in TIMING} for r in runs.read_metrics(tmp_path / "resumed" / "metrics.jsonl")]
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [1, 2, 3, 4]
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys() and ra == pytest.approx(rb, rel=1e-5, abs=1e-7)


def test_several_pairs_files_and_per_source_groups(tmp_path):
    rows = {"a": {"prompt": "Q1", "chosen": "A", "rejected": "B", "source": "pns"},
            "b": {"prompt": "Q2", "chosen": "C", "rejected": "D", "source": "perturbed"}}
    for name, row in rows.items():
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    pairs = trm.load_pairs(f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}")
    assert [p["prompt"] for p in pairs] == ["Q1", "Q2"]
    assert trm.by_group(pairs) == {"pns": [0], "perturbed": [1]}
    assert trm.by_group(trm.offline_pairs(6, seed=0)).keys() == {"slip", "wrong_op"}
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"prompt": "Q", "chosen": "A"}\n')
    with pytest.raises(DataError, match="c.jsonl:1: missing field 'rejected'"):  # names the file that is wrong
        trm.load_pairs(f"{tmp_path / 'a.jsonl'},{bad}")


def test_wilson_interval_says_when_accuracy_beats_chance():
    low, high = trm.wilson_interval(20, 27)  # 74%: the interval leaves 0.5 behind
    assert 0.5 < low < 20 / 27 < high < 1
    assert trm.wilson_interval(14, 27)[0] < 0.5  # 52%: indistinguishable from a coin
    assert trm.wilson_interval(0, 5)[0] == 0.0 and trm.wilson_interval(5, 5)[1] == 1.0
