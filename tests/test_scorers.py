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
* shared-prefix scoring: the verifier and the four criteria read from one prefill of the shared
  head (a DynamicCache copied to the five tails, padded in the middle) equal the full-prompt
  forward of the same token rows (tiny model, and the real model to 1e-4 in fp32), in any batch
  size and when the completion is cut; build_scorers' verifier + judge pair shares one prefill
  (the judge's call runs no forward) and gives the numbers of each scorer on its own;
* real model: the generative verifier prefers a correct worked solution to nonsense.
"""
import math

import pytest
import torch

from pns_mini.data import offline_problems, prompt_messages
from pns_mini.modeling import ModelLoadError, load_model_and_tokenizer, save_atomic
from pns_mini.scorers import (JUDGE_RUBRIC, VERIFIER, JudgeScorer, RewardModelScorer, SharedPrefixScorer, build_scorers,
                              encode_with_completion, judge_parts, reward_model_text, shared_length, verifier_parts)

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
    questions, completions = [p["question"] for p in problems] * 2, [p["solution"] for p in problems] + [nonsense] * 2
    scores = rm(questions, completions)
    assert scores[0] > scores[2] and scores[1] > scores[3], scores
    # the five scores from one shared prefill = five full forwards, on 30 real layers in fp32
    tails = (VERIFIER, *JUDGE_RUBRIC)
    shared = SharedPrefixScorer(model, tok, batch_size=4).scores(questions, completions, tails)
    full = SharedPrefixScorer(model, tok, batch_size=4, share_prefix=False).scores(questions, completions, tails)
    assert [d[n] for d in shared for n in tails] == pytest.approx([d[n] for d in full for n in tails], abs=1e-4)


def test_judge_criteria_subset(tiny):
    model, tok = tiny
    full = JudgeScorer(model, tok).score_detailed(QUESTIONS[:1], COMPLETIONS[:1])[0]
    one = JudgeScorer(model, tok, criteria=("relevance",)).score_detailed(QUESTIONS[:1], COMPLETIONS[:1])[0]
    assert list(one) == ["relevance"] and one["relevance"] == pytest.approx(full["relevance"], abs=1e-5)
    with pytest.raises(ValueError, match="subset of logical_flow"):
        JudgeScorer(model, tok, criteria=("style",))


ALL_TAILS = (VERIFIER, *JUDGE_RUBRIC)


def test_the_five_prompts_share_their_head(tokenizer):
    """The verifier and every criterion differ only after the completion: the shared part is
    the chat-template start, the problem and the solution (and the blank line after it)."""
    head, _ = verifier_parts(tokenizer, QUESTIONS[0])
    assert all(judge_parts(tokenizer, QUESTIONS[0], name)[0] == head for name in JUDGE_RUBRIC)
    rows = [tokenizer(head + COMPLETIONS[0] + tail, add_special_tokens=False)["input_ids"]
            for tail in [verifier_parts(tokenizer, QUESTIONS[0])[1]] +
            [judge_parts(tokenizer, QUESTIONS[0], name, "Score: ")[1] for name in JUDGE_RUBRIC]]
    n = shared_length(rows)
    assert tokenizer.decode(rows[0][:n]).endswith(COMPLETIONS[0] + "\n\n")
    assert tokenizer.decode(rows[0][n:]).startswith("Is the proposed solution correct")
    assert shared_length([[1, 2, 3], [1, 2, 3]]) == 2  # the last token always stays in the tail
    assert shared_length([[1, 2, 3], [1, 5, 3, 4]]) == 1


def test_shared_prefix_equals_the_full_prompt_forward(tiny):
    """One prefill + five tails on copies of its cache (padded in the middle) = each row's own
    full forward: by hand for one unpadded row, and against share_prefix=False in any batch size."""
    model, tok = tiny
    full = SharedPrefixScorer(model, tok, share_prefix=False).scores(QUESTIONS, COMPLETIONS, ALL_TAILS)
    as_table = lambda scores: [d[n] for d in scores for n in ALL_TAILS]  # noqa: E731 (pair-major, flat)
    for bs in (1, 3, 8):
        shared = SharedPrefixScorer(model, tok, batch_size=bs).scores(QUESTIONS, COMPLETIONS, ALL_TAILS)
        assert as_table(shared) == pytest.approx(as_table(full), abs=1e-5)
    # by hand: the verifier's row of pair 1 alone, no padding, no cache
    head, tail = verifier_parts(tok, QUESTIONS[1])
    ids = tok(head + COMPLETIONS[1] + tail, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    yes, no = (logp[[tok(v, add_special_tokens=False)["input_ids"][0] for v in vs]].logsumexp(-1)
               for vs in (("Yes", " Yes"), ("No", " No")))
    assert shared[1][VERIFIER] == pytest.approx(float(yes - no), abs=1e-5)


def test_shared_prefix_with_a_cut_completion(tiny):
    """Over max_length, all five rows get the cut the longest tail needs, keep the end of the
    completion and their shared head, and still score as their full forwards."""
    model, tok = tiny
    long = " ".join(f"step {i} adds one." for i in range(150)) + " The final answer is \\boxed{151}."
    questions, completions = QUESTIONS[:2], [long, COMPLETIONS[1]]
    cut = SharedPrefixScorer(model, tok, max_length=400)
    rows = cut.rows(questions[0], long)
    tails = [verifier_parts(tok, questions[0])[1]] + [judge_parts(tok, questions[0], c, cut.answer_prefix)[1]
                                                        for c in JUDGE_RUBRIC]
    assert max(map(len, rows)) == 400 and all(tok.decode(r).endswith(t) for r, t in zip(rows, tails))
    n = shared_length(rows)
    assert "The final answer is \\boxed{151}." in tok.decode(rows[0][:n]) and "step 0 adds" not in tok.decode(rows[0])
    shared = cut.scores(questions, completions, ALL_TAILS)
    full = SharedPrefixScorer(model, tok, max_length=400, share_prefix=False).scores(questions, completions, ALL_TAILS)
    assert [v for d in shared for v in d.values()] == pytest.approx([v for d in full for v in d.values()], abs=1e-5)


def test_verifier_and_judge_share_one_prefill(tiny):
    """build_scorers' default pair: the reward model's call scores all five tails, the judge's
    call on the same rows runs no forward and returns what the judge alone would; new rows are
    computed afresh. The numbers equal those of each scorer on its own."""
    model, tok = tiny
    alone_rm, alone_judge = RewardModelScorer(model, tok).raw(QUESTIONS, COMPLETIONS), \
        JudgeScorer(model, tok).score_detailed(QUESTIONS, COMPLETIONS)
    rm, judge = build_scorers(model, tok, reward_model=None, judge_model=None, base_model_name="unused")
    assert rm.shared is judge.shared and rm.shared.tails == ALL_TAILS
    forwards = []
    hook = model.register_forward_hook(lambda module, args, kwargs_out: forwards.append(1))
    try:
        assert rm.raw(QUESTIONS, COMPLETIONS) == pytest.approx(alone_rm, abs=1e-5)
        assert len(forwards) == 2  # one prefill + one forward of the 5 x 4 tails (batch_size 8)
        detailed = judge.score_detailed(QUESTIONS, COMPLETIONS)
        assert len(forwards) == 2  # served from the reward model's call
        assert detailed == [pytest.approx(d, abs=1e-5) for d in alone_judge]
        judge(QUESTIONS[:2], COMPLETIONS[:2])  # served once: a second call computes again
        assert len(forwards) == 4
        # the other order works too: the judge first, then the reward model served
        rm2, judge2 = build_scorers(model, tok, reward_model=None, judge_model=None, base_model_name="unused")
        judge2(QUESTIONS, COMPLETIONS)
        assert rm2.raw(QUESTIONS, COMPLETIONS) == pytest.approx(alone_rm, abs=1e-5) and len(forwards) == 6
    finally:
        hook.remove()
    # the unshared baseline gives the same numbers
    rm3, judge3 = build_scorers(model, tok, reward_model=None, judge_model=None, base_model_name="unused",
                                share_prefix=False)
    assert rm3.raw(QUESTIONS, COMPLETIONS) == pytest.approx(alone_rm, abs=1e-5)


def test_unshared_scorer_runs_only_the_tails_asked_for(tiny):
    """share_prefix=False (train_generator.py's choice when one weight is 0): the reward model's call
    runs the verifier alone, one forward for the 4 rows, not the four judge criteria as well."""
    model, tok = tiny
    rm, judge = build_scorers(model, tok, reward_model=None, judge_model=None, base_model_name="unused",
                              share_prefix=False)
    forwards = []
    hook = model.register_forward_hook(lambda module, args, kwargs_out: forwards.append(1))
    try:
        rm.raw(QUESTIONS, COMPLETIONS)
        assert len(forwards) == 1
        judge(QUESTIONS, COMPLETIONS)  # then the judge: one forward per criterion
        assert len(forwards) == 1 + len(JUDGE_RUBRIC)
    finally:
        hook.remove()
