"""Bad input is refused in one line, and refused before anything is written.

A table of the inputs a demanding user tried (issue 13), each run through the script's command
line entry (`main_guard`, in-process for speed: the same parsing, the same error handling). Each
must exit with status 2 and print ONE stderr line "error: ..." that names the file, line and
field, or the flag; no traceback. Cases aimed at a finished run (a DPO run, an evaluation, a
reward-model and a generator folder) leave every one of its files byte-identical; cases aimed at a
new folder leave no folder behind.

Also: the expected notices are quiet (bitsandbytes' missing `kernels` package when nothing is
4-bit; transformers' "newly initialized" report of a reward model's new score head), while a
4-bit CPU load keeps the kernels notice.
"""
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

import evaluate
import synthesize
import train_dpo
import train_generator
import train_reward_model
from pns_mini.config import main_guard, parse_config, save_config

SCRIPTS = {"dpo": train_dpo, "generator": train_generator, "rm": train_reward_model, "eval": evaluate,
           "synth": synthesize}
MSG = [{"role": "system", "content": "You solve math."}, {"role": "user", "content": "What is 1 + 1?"}]
GOOD = {"prompt": MSG, "chosen": [{"role": "assistant", "content": r"\boxed{2}"}],
        "rejected": [{"role": "assistant", "content": r"\boxed{3}"}]}


def jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir, tokenizer):
    """Input files, and finished run folders to aim the bad inputs at."""
    from conftest import build_tiny_model
    from pns_mini.modeling import load_model_and_tokenizer, save_atomic
    root = tmp_path_factory.mktemp("bad-input")
    w = {"root": root, "model": tiny_model_dir}
    w["pairs"] = jsonl(root / "pairs.jsonl", [GOOD, {**GOOD, "chosen": [{"role": "assistant", "content": r"\boxed{4}"}]}])
    w["other_pairs"] = jsonl(root / "other.jsonl", [GOOD])
    w["sytem"] = jsonl(root / "sytem.jsonl", [{**GOOD, "prompt": [{**MSG[0], "role": "sytem"}, MSG[1]]}])
    w["usr"] = jsonl(root / "usr.jsonl", [GOOD, {**GOOD, "prompt": [MSG[0], {**MSG[1], "role": "usr"}]}])
    w["same"] = jsonl(root / "same.jsonl", [{**GOOD, "rejected": [{"role": "assistant", "content": r"\boxed{2} "}]}])
    w["switches"] = jsonl(root / "switches.jsonl", [{**GOOD, "chat_template_kwargs": "yes"}])
    w["trl_pairs"] = jsonl(root / "trl.jsonl", [{"prompt": "1 + 1?", "chosen": "2", "rejected": "3"}])
    (root / "empty.jsonl").write_text("")
    w["no_ckpt_run"] = root / "no-ckpt-run"  # a finished run whose checkpoints were deleted to save disk
    (w["no_ckpt_run"] / "final").mkdir(parents=True)
    (w["no_ckpt_run"] / "final" / "adapter_config.json").write_text("{}\n")
    (root / "latin1.jsonl").write_bytes('{"id": 1, "question": "Combien coûte", "gold": "2"}\n'.encode("latin-1"))
    (root / "cfg.json").write_text(json.dumps({"max_steps": "3"}))
    # an adapter trained on another base (hidden size 32, not 64)
    other = root / "other-base"
    build_tiny_model(tokenizer, hidden=32).save_pretrained(other)
    tokenizer.save_pretrained(other)
    model, tok = load_model_and_tokenizer(str(other), lora_r=4)
    w["other_adapter"] = str(save_atomic(model, tok, root / "other-adapter"))

    # finished runs
    w["dpo_run"] = root / "dpo-run"
    train_dpo.main(train_dpo.Config(
        pairs=w["pairs"], model=tiny_model_dir, output_dir=str(w["dpo_run"]), max_steps=1, learning_rate=1e-3,
        per_device_train_batch_size=2, gradient_accumulation_steps=1, warmup_steps=0, lora_r=4,
        gradient_checkpointing=False, device="cpu"))
    w["eval_run"] = root / "eval-run"
    evaluate.main(evaluate.Config(model=tiny_model_dir, benchmarks="offline", limit=1, max_completion_length=4,
                                  output_dir=str(w["eval_run"]), bootstrap_resamples=10))
    # a finished 2-step DPO run (checkpoints 1 and 2) whose pairs file is then edited in place
    w["edited"] = jsonl(root / "edited.jsonl", [GOOD, {**GOOD, "rejected": [{"role": "assistant", "content": "5"}]}])
    w["edited_run"] = root / "edited-run"
    train_dpo.main(parse_config(train_dpo.Config, resume_edited(w, "--max-steps", "2")))
    jsonl(root / "edited.jsonl", [GOOD, {**GOOD, "rejected": [{"role": "assistant", "content": "6"}]}])
    w["synth_run"] = root / "synth-run"  # what the stats-only case aims at: a synthesis folder's own files
    w["synth_run"].mkdir()
    jsonl(w["synth_run"] / "pairs.jsonl", [GOOD])
    (w["synth_run"] / "report.md").write_text("# its own report\n")
    w["broken_eval"] = root / "broken-eval"  # an evaluation folder whose config.json is not an object
    shutil.copytree(w["eval_run"], w["broken_eval"])
    (w["broken_eval"] / "config.json").write_text("[]\n")
    w["rm_run"], w["gen_run"] = root / "rm-run", root / "gen-run"  # their saved configs are all the guard reads
    w["rm_run"].mkdir()
    save_config(train_reward_model.Config(model=tiny_model_dir, pairs=w["pairs"], output_dir=str(w["rm_run"])),
                w["rm_run"] / "config.json")
    w["gen_run"].mkdir()
    save_config(train_generator.Config(model=tiny_model_dir, problems="offline", output_dir=str(w["gen_run"])),
                w["gen_run"] / "config.json")
    return w


def dpo(w, pairs, *more):
    return ["--pairs", pairs, "--model", w["model"], "--output-dir", str(w["root"] / "new"), "--device", "cpu", *more]


def resume_dpo(w, *changes):
    return ["--pairs", w["pairs"], "--model", w["model"], "--output-dir", str(w["dpo_run"]), "--max-steps", "1",
            "--learning-rate", "1e-3", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1",
            "--warmup-steps", "0", "--lora-r", "4", "--no-gradient-checkpointing", "--device", "cpu", "--resume",
            *changes]


def resume_edited(w, *changes):
    return [*resume_dpo(w, "--save-steps", "1"), "--pairs", w["edited"], "--output-dir", str(w["edited_run"]), *changes]


def resume_rm(w, *changes):
    return ["--model", w["model"], "--pairs", w["pairs"], "--output-dir", str(w["rm_run"]), "--resume", *changes]


def gen(w, *more):
    return ["--model", w["model"], "--output-dir", str(w["root"] / "new"), *more]


def ev(w, *more):
    return ["--model", w["model"], "--benchmarks", "offline", "--limit", "1", "--max-completion-length", "4",
            "--bootstrap-resamples", "10", *more]


# (case, script, argv, the one line it must print (regex, after "error: "), the finished folder it aims at)
CASES = [
    ("unknown role sytem", "dpo", lambda w: dpo(w, w["sytem"]),
     r"{sytem}:1: field 'prompt' has a message with unknown role 'sytem' \(accepted: system, user, assistant\)", None),
    ("unknown role usr", "dpo", lambda w: dpo(w, w["usr"]), r"{usr}:2: field 'prompt' has a message with unknown role 'usr'", None),
    ("chosen equals rejected", "dpo", lambda w: dpo(w, w["same"]),
     r"{same}:1: fields 'chosen' and 'rejected' hold the same text", None),
    ("chat_template_kwargs not an object", "dpo", lambda w: dpo(w, w["switches"]),
     r"{switches}:1: field 'chat_template_kwargs' must be an object of template switches", None),
    ("--stats-only on a pairs file synthesize.py did not write", "synth",
     lambda w: ["--stats-only", w["trl_pairs"], "--output-dir", str(w["root"] / "new")],
     r"{trl_pairs}:1: no field 'id': the stats read pairs files written by synthesize.py", None),
    ("--stats-only into another synthesis run's folder", "synth",
     lambda w: ["--stats-only", w["pairs"], "--output-dir", str(w["synth_run"])],
     r"{synth_run}: holds a synthesis run \(pairs.jsonl\) whose stats.json and report.md this would overwrite", "synth_run"),
    ("config.json not a JSON object (evaluate)", "eval", lambda w: ev(w, "--output-dir", str(w["broken_eval"])),
     r"{broken_eval}/config.json: not a JSON object", "broken_eval"),
    ("empty problems file (generator)", "generator", lambda w: gen(w, "--problems", str(w["root"] / "empty.jsonl")),
     r"{root}/empty.jsonl: no problems \(the file is empty\)", None),
    ("a finished run without checkpoints, no --resume", "generator",
     lambda w: ["--model", w["model"], "--problems", "offline", "--output-dir", str(w["no_ckpt_run"])],
     r"{no_ckpt_run}: already holds a run; pass --resume", "no_ckpt_run"),
    ("a finished run without checkpoints, --resume", "generator",
     lambda w: ["--model", w["model"], "--problems", "offline", "--output-dir", str(w["no_ckpt_run"]), "--resume"],
     r"{no_ckpt_run}: holds a finished run \(final/\) but no checkpoint to resume it from", "no_ckpt_run"),
    ("empty pairs file", "dpo", lambda w: dpo(w, str(w["root"] / "empty.jsonl")), r"{root}/empty.jsonl: no pairs \(the file is empty\)", None),
    ("other --pairs on resume (DPO)", "dpo", lambda w: resume_dpo(w, "--pairs", w["other_pairs"]),
     r"{root}/dpo-run/config.json: --resume with different settings \(--pairs '{pairs}' -> '{other_pairs}'\)", "dpo_run"),
    ("changed learning rate on resume (DPO)", "dpo", lambda w: resume_dpo(w, "--learning-rate", "0.01"),
     r"--resume with different settings \(--learning-rate 0.001 -> 0.01\)", "dpo_run"),
    ("pairs file edited in place, then --resume (DPO)", "dpo", lambda w: resume_edited(w, "--max-steps", "2"),
     r"{root}/edited-run/config.json: --resume with different settings \(data '\w+' -> '\w+' \(the input file changed\)\)",
     "edited_run"),
    ("--max-steps below the latest checkpoint on --resume (DPO)", "dpo", lambda w: resume_edited(w, "--max-steps", "1"),
     r"{root}/edited-run: its latest checkpoint is step 2, past the 1 steps asked for now", "edited_run"),
    ("other --pairs on resume (reward model)", "rm", lambda w: resume_rm(w, "--pairs", w["other_pairs"]),
     r"{root}/rm-run/config.json: --resume with different settings \(--pairs '{pairs}' -> '{other_pairs}'\)", "rm_run"),
    ("changed learning rate on resume (reward model)", "rm", lambda w: resume_rm(w, "--learning-rate", "0.01"),
     r"--resume with different settings \(--learning-rate 0.0001 -> 0.01\)", "rm_run"),
    ("changed beta on resume (generator)", "generator",
     lambda w: ["--model", w["model"], "--problems", "offline", "--output-dir", str(w["gen_run"]), "--resume", "--beta", "0.1"],
     r"--resume with different settings \(--beta 0.04 -> 0.1\)", "gen_run"),
    ("--adapter trained on another base", "eval", lambda w: ev(w, "--adapter", w["other_adapter"], "--output-dir", str(w["root"] / "new")),
     r"adapter '{other_adapter}' does not fit the base model '{model}'", None),
    ("--adapter folder that does not exist", "eval", lambda w: ev(w, "--adapter", str(w["root"] / "nope"), "--output-dir", str(w["root"] / "new")),
     r"adapter '{root}/nope': no such folder", None),
    ("--adapter folder that does not exist (DPO)", "dpo",
     lambda w: dpo(w, w["pairs"], "--adapter", str(w["root"] / "nope"), "--precompute-ref-log-probs"),
     r"adapter '{root}/nope': no such folder", None),
    ("problems file not UTF-8", "generator", lambda w: gen(w, "--problems", str(w["root"] / "latin1.jsonl")),
     r"{root}/latin1.jsonl:1: not UTF-8 text", None),
    ("negative --limit (generator)", "generator", lambda w: gen(w, "--limit", "-3"), r"--limit must be >= 1 or none, got -3", None),
    ("negative --limit (synthesize)", "synth", lambda w: ["--negative-source", "perturbed", "--limit", "-3", "--output-dir", str(w["root"] / "new")],
     r"--limit must be >= 1 or none, got -3", None),
    ("unknown --benchmarks into a finished folder", "eval", lambda w: ev(w, "--benchmarks", "nope", "--output-dir", str(w["eval_run"])),
     r"unknown problem source 'nope'", "eval_run"),
    ("JSON config with a string for an int", "generator", lambda w: gen(w, "--config", str(w["root"] / "cfg.json")),
     r"{root}/cfg.json: field 'max_steps' \(--max-steps\) must be an integer, got \"3\"", None),
    ("a zero size", "generator", lambda w: gen(w, "--prompts-per-step", "0"), r"--prompts-per-step must be >= 1, got 0", None),
    ("a zero size (DPO)", "dpo", lambda w: dpo(w, w["pairs"], "--gradient-accumulation-steps", "0"),
     r"--gradient-accumulation-steps must be >= 1, got 0", None),
    ("an unknown --negative-source", "synth", lambda w: ["--negative-source", "random", "--output-dir", str(w["root"] / "new")],
     r"--negative-source must be one of pns, rejection, prompted, perturbed, got 'random'", None),
    ("a negative --rpo-alpha", "dpo", lambda w: dpo(w, w["pairs"], "--rpo-alpha", "-1"), r"--rpo-alpha must be >= 0 or none, got -1.0", None),
    ("an unknown flag", "dpo", lambda w: dpo(w, w["pairs"], "--max-stpes", "3"), r"unrecognized arguments: --max-stpes 3", None),
]


@pytest.mark.parametrize("case, script, argv, message, target", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(world, case, script, argv, message, target, monkeypatch, capsys):
    module = SCRIPTS[script]
    before = snapshot(world[target]) if target else None
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv(world)])
    with pytest.raises(SystemExit) as exit_info:
        main_guard(module.main, module.Config, module.__doc__)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    expected = message.format(**{k: re.escape(str(v)) for k, v in world.items()})
    assert re.search(expected, errors[0]), (errors[0], expected)
    if target:
        assert snapshot(world[target]) == before, f"{case}: the finished run's files changed"
    assert not (world["root"] / "new").exists(), f"{case}: a failed run left a folder behind"


def test_resume_on_a_device_that_loads_otherwise_is_refused(world, monkeypatch, capsys):
    """--device may change on --resume, but not what it decides: a CPU run resumed where CUDA is
    found would load a 4-bit base in bf16 (--load-in-4bit and --dtype left to the device)."""
    from pns_mini import modeling
    before = snapshot(world["dpo_run"])
    monkeypatch.setattr(modeling, "resolve_device", lambda device="auto": torch.device("cuda"))
    monkeypatch.setattr(sys, "argv", ["train_dpo.py", *resume_dpo(world)])
    with pytest.raises(SystemExit):
        main_guard(train_dpo.main, train_dpo.Config, train_dpo.__doc__)
    assert "load_in_4bit False -> True; dtype 'float32' -> 'bfloat16'" in capsys.readouterr().err
    assert snapshot(world["dpo_run"]) == before


def test_expected_notices_are_quiet_and_meaningful_ones_kept(tiny_model_dir, capfd, caplog):
    from pns_mini import modeling
    notice = "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'"
    with caplog.at_level(logging.WARNING):
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(notice)
    assert notice not in caplog.text  # nothing is 4-bit here: the notice means nothing
    modeling.load_model_and_tokenizer(tiny_model_dir, num_labels=1, lora_r=4)  # a reward model: new score head
    out = capfd.readouterr()
    assert "newly initialized" not in out.err + out.out and "LOAD REPORT" not in out.err + out.out
    modeling._KERNELS_NOTICE.four_bit_on_cpu = True  # what a 4-bit load on the CPU sets
    try:
        with caplog.at_level(logging.WARNING):
            logging.getLogger("bitsandbytes.backends.cpu.ops").warning(notice)
        assert notice in caplog.text
    finally:
        modeling._KERNELS_NOTICE.four_bit_on_cpu = False
