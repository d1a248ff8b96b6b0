"""Model-based scores (pns_mini/scorers.py) on the tiny random model, plus one check on the real
SmolLM2-135M-Instruct:

* shapes and ranges: normalised scores in [0, 1], sigmoid(raw) = normalised, the judge's score is
  the mean of its per-criterion expected scores / 3, and equals sum_k k p(k) / sum_k p(k) computed
  by hand from one forward pass;
* invariances: the same inputs give the same scores, in any batch size (left padding + position
  ids), and the training mode of the model is restored;
* the memory trick: a LoRA policy with its adapter disabled scores exactly like the base model,
  even after the adapter has been moved; build_scorers reuses it instead of loading a copy;
* a classifier reward model (a tiny LlamaForSequenceClassification, and a LoRA adapter on one)
  loads through build_scorers and scores the chat-templated text, and a causal LM without a
  trained head is refused;
* over-long inputs keep the end of the completion;
* real model: the generative verifier prefers a correct worked solution to nonsense.
"""
import math

import pytest
import torch

from pns_mini.data import offline_problems, prompt_messages
from pns_mini.modeling import ModelLoadError, load_model_and_tokenizer, save_atomic
from pns_mini.scorers import (JUDGE_RUBRIC, JudgeScorer, RewardModelScorer, build_scorers, encode_with_completion,
                              judge_parts, reward_model_text, verifier_parts)

PROBLEMS = offline_problems(3)
QUESTIONS = [p["question"] for p in PROBLEMS] + [PROBLEMS[0]["question"]]
COMPLETIONS = [p["solution"] for p in PROBLEMS] + ["Purple 7. \\boxed{7}"]  # different lengths: padding is exercised


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_and_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tokenizer):
    """A saved 2-layer random LlamaForSequenceClassification with one label and a pad token id."""
    from transformers import LlamaConfig, LlamaForSequenceClassification
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # a visible spread of raw scores
    path = tmp_path_factory.mktemp("tiny-rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_generative_reward_model_shapes_range_and_sigmoid(tiny):
    model, tok = tiny
    rm = RewardModelScorer(model, tok)
    assert rm.kind == "generative"
    raw, scores = rm.raw(QUESTIONS, COMPLETIONS), rm(QUESTIONS, COMPLETIONS)
    assert len(raw) == len(scores) == 4
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == pytest.approx([1 / (1 + math.exp(-r)) for r in raw], abs=1e-12)
    assert rm([], []) == []
    with pytest.raises(ValueError, match="2 questions but 1 completions"):
        rm(QUESTIONS[:2], COMPLETIONS[:1])


def test_generative_raw_is_log_p_yes_minus_log_p_no_by_hand(tiny):
    model, tok = tiny
    head, tail = verifier_parts(tok, QUESTIONS[0])
    ids = tok(head + COMPLETIONS[0] + tail, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
    p = logp.exp()
    ids_of = lambda s: tok(s, add_special_tokens=False)["input_ids"][0]  # noqa: E731 (each is one token)
    p_yes = p[ids_of("Yes")] + p[ids_of(" Yes")]
    p_no = p[ids_of("No")] + p[ids_of(" No")]
    rm = RewardModelScorer(model, tok)
    assert rm.raw(QUESTIONS[:1], COMPLETIONS[:1])[0] == pytest.approx(math.log(p_yes / p_no), abs=1e-5)
    assert rm(QUESTIONS[:1], COMPLETIONS[:1])[0] == pytest.approx(float(p_yes / (p_yes + p_no)), abs=1e-6)


def test_judge_is_the_probability_weighted_digit_by_hand(tiny):
    model, tok = tiny
    judge = JudgeScorer(model, tok)
    detailed = judge.score_detailed(QUESTIONS, COMPLETIONS)
    assert [list(d) for d in detailed] == [list(JUDGE_RUBRIC)] * 4
    assert all(0.0 <= v <= 3.0 for d in detailed for v in d.values())
    assert judge(QUESTIONS, COMPLETIONS) == pytest.approx([sum(d.values()) / len(d) / 3 for d in detailed])
    # one criterion by hand: E = sum_k k p(k) / sum_k p(k) over the tokens "0".."3"
    head, tail = judge_parts(tok, QUESTIONS[0], "relevance", judge.answer_prefix)
    assert tail.endswith("Score: ")  # SmolLM2 writes " 3" as " " + "3": the prefix ends with the space
    ids = tok(head + COMPLETIONS[0] + tail, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        p = model(torch.tensor([ids])).logits[0, -1].float().softmax(-1)
    pk = torch.stack([p[tok(str(k), add_special_tokens=False)["input_ids"][0]] for k in range(4)])
    assert detailed[0]["relevance"] == pytest.approx(float((pk * torch.arange(4)).sum() / pk.sum()), abs=1e-5)


def test_scores_are_deterministic_and_batch_size_invariant(tiny, classifier_dir):
    model, tok = tiny
    cls_model, cls_tok = load_model_and_tokenizer(classifier_dir, num_labels=1)
    for make in (lambda bs: RewardModelScorer(model, tok, batch_size=bs),
                 lambda bs: JudgeScorer(model, tok, batch_size=bs),
                 lambda bs: RewardModelScorer(cls_model, cls_tok, batch_size=bs)):
        four = make(4).raw(QUESTIONS, COMPLETIONS)
        assert make(4).raw(QUESTIONS, COMPLETIONS) == four  # bit-identical on a second call
        assert make(1).raw(QUESTIONS, COMPLETIONS) == pytest.approx(four, abs=1e-5)  # no padding at all


def test_training_mode_is_restored(tiny):
    model, tok = tiny
    model.train()
    RewardModelScorer(model, tok)(QUESTIONS[:1], COMPLETIONS[:1])
    assert model.training
    model.eval()
    JudgeScorer(model, tok)(QUESTIONS[:1], COMPLETIONS[:1])
    assert not model.training


def test_policy_with_adapter_disabled_scores_like_the_base(tiny_model_dir, tiny):
    base, tok = tiny
    policy, _ = load_model_and_tokenizer(tiny_model_dir, lora_r=4)
    with torch.no_grad():  # move the adapter away from its zero init so it changes the logits
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    qs, cs = QUESTIONS[2:], COMPLETIONS[2:]
    for cls in (RewardModelScorer, JudgeScorer):
        expected = cls(base, tok).raw(qs, cs)
        assert cls(policy, tok, use_reference=True).raw(qs, cs) == pytest.approx(expected, abs=1e-6)
        assert cls(policy, tok).raw(qs, cs) != pytest.approx(expected, abs=1e-3)  # the adapter matters
    # build_scorers reuses the policy (no second copy) with the adapter disabled
    rm, judge = build_scorers(policy, tok, reward_model=None, judge_model=None, base_model_name=tiny_model_dir)
    assert rm.model is policy and judge.model is policy and rm.use_reference and judge.use_reference
    assert rm.kind == "generative"
    assert rm.raw(qs, cs) == pytest.approx(RewardModelScorer(base, tok).raw(qs, cs), abs=1e-6)
    _, judge = build_scorers(policy, tok, reward_model=None, judge_model=tiny_model_dir, base_model_name=tiny_model_dir)
    assert judge.model is policy  # the same name as the base: still no second copy


def test_classifier_reward_model_scores_the_chat_text(classifier_dir, tiny, tokenizer):
    policy, tok = tiny
    rm, _ = build_scorers(policy, tok, reward_model=classifier_dir, judge_model=None, base_model_name="unused")
    assert rm.kind == "classifier" and rm.model is not policy
    raw = rm.raw(QUESTIONS, COMPLETIONS)
    assert rm(QUESTIONS, COMPLETIONS) == pytest.approx([1 / (1 + math.exp(-r)) for r in raw], abs=1e-12)
    assert max(raw) - min(raw) > 1e-3  # the inputs are told apart
    # by hand: the logit of one unpadded row of the chat-templated text
    text = reward_model_text(tokenizer, prompt_messages(QUESTIONS[1]), COMPLETIONS[1])
    assert "<|im_start|>assistant\n" + COMPLETIONS[1] + "<|im_end|>" in text
    with torch.no_grad():
        logit = rm.model(torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])).logits[0, 0]
    assert raw[1] == pytest.approx(float(logit), abs=1e-5)


def test_classifier_from_an_adapter_folder(classifier_dir, tmp_path, tiny):
    trained, tok = load_model_and_tokenizer(classifier_dir, num_labels=1, lora_r=4)
    with torch.no_grad():  # a "trained" adapter and head
        for name, p in trained.named_parameters():
            if "lora_B" in name or "score" in name:
                p.add_(0.3)
    expected = RewardModelScorer(trained, tok).raw(QUESTIONS, COMPLETIONS)
    save_atomic(trained, tok, tmp_path / "rm-adapter")
    rm, _ = build_scorers(*tiny, reward_model=str(tmp_path / "rm-adapter"), judge_model=None, base_model_name="unused")
    assert rm.kind == "classifier"
    assert rm.raw(QUESTIONS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)


def test_unusable_reward_and_judge_models_fail_loudly(tiny_model_dir, tiny):
    with pytest.raises(ModelLoadError, match="holds no trained reward head"):  # a causal LM: random head
        build_scorers(*tiny, reward_model=tiny_model_dir, judge_model=None, base_model_name=tiny_model_dir)
    with pytest.raises(ModelLoadError, match="--judge-model 'no-such-org/no-such-judge'"):
        build_scorers(*tiny, reward_model=None, judge_model="no-such-org/no-such-judge", base_model_name=tiny_model_dir)
    with pytest.raises(ValueError, match="sequence-classification model"):
        RewardModelScorer(*tiny, kind="classifier")


def test_long_inputs_keep_the_end_of_the_completion(tokenizer):
    head, tail = verifier_parts(tokenizer, QUESTIONS[0])
    completion = " ".join(f"step {i} adds one." for i in range(300)) + " The final answer is \\boxed{301}."
    n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    max_length = 2 * n_head + 100  # the completion's share (n_head + 100 - tail) is above max_length // 2
    ids = encode_with_completion(tokenizer, head, completion, tail, max_length=max_length)
    assert len(ids) == max_length
    text = tokenizer.decode(ids)
    assert text.startswith(head) and "Problem:\n" + QUESTIONS[0] in text  # template and question kept
    assert text.endswith(tail) and "The final answer is \\boxed{301}." in text  # the answer kept
    assert "step 0 adds" not in text  # the start of the completion went
    # inputs that fit are tokenized in one piece
    assert encode_with_completion(tokenizer, head, COMPLETIONS[0], tail, 4096) == \
        tokenizer(head + COMPLETIONS[0] + tail, add_special_tokens=False)["input_ids"]


def test_real_model_verifier_prefers_a_correct_solution_to_nonsense(embedded_dir):
    """SmolLM2-135M-Instruct as the generative reward model (4 short forward passes). Measured:
    it tells a worked solution from nonsense (raw about -0.4 vs -0.9), but NOT a correct solution
    from the same solution with a wrong final number, so that is not asserted."""
    model, tok = load_model_and_tokenizer("smollm2-135m")
    rm = RewardModelScorer(model, tok, batch_size=4)
    problems = offline_problems(2)
    nonsense = ("Bananas are yellow and the sky is green. Purple elephants dance on Tuesday.\n"
                "The final answer is \\boxed{7}")
    scores = rm([p["question"] for p in problems] * 2, [p["solution"] for p in problems] + [nonsense] * 2)
    assert scores[0] > scores[2] and scores[1] > scores[3], scores


def test_judge_criteria_subset(tiny):
    model, tok = tiny
    full = JudgeScorer(model, tok).score_detailed(QUESTIONS[:1], COMPLETIONS[:1])[0]
    one = JudgeScorer(model, tok, criteria=("relevance",)).score_detailed(QUESTIONS[:1], COMPLETIONS[:1])[0]
    assert list(one) == ["relevance"] and one["relevance"] == pytest.approx(full["relevance"], abs=1e-5)
    with pytest.raises(ValueError, match="subset of logical_flow"):
        JudgeScorer(model, tok, criteria=("style",))
