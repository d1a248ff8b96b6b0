"""The CUDA path, checked on a lent GPU in one short run: bf16, a 4-bit (NF4) base, throughput
and peak memory of each stage. Prints one table; CI never runs it (CI has no GPU).

The GPU machine has no internet and no copy of the embedded weights, so the models are built
from configs with random weights: the SmolLM2-135M shape (with its real tokenizer) and a
Qwen2.5-0.5B-like shape (the consumer-GPU preset's size). Random weights never write a
well-formed answer, so rewards here are all format failures: this checks that every code path
runs on CUDA and what it costs, not what it learns.

    python benchmarks/gpu_check.py --tokenizer-dir .gpu/smollm2 --out runs/gpu-check
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "smollm2-135m-shape": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                               num_attention_heads=9, num_key_value_heads=3, head_dim=64),
    "qwen2.5-0.5b-shape": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                               num_attention_heads=14, num_key_value_heads=2, head_dim=64),
}


def build_random_model(tokenizer_dir: Path, shape: str, target: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **SHAPES[shape])
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def timed(name, fn, results):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    try:
        info = fn() or {}
        status = "ok"
    except Exception as e:  # a check that fails is reported and the next one still runs
        traceback.print_exc()
        info, status = {}, f"FAILED: {type(e).__name__}: {str(e)[:200]}"
    results.append({"check": name, "status": status, "seconds": round(time.perf_counter() - t, 1),
                    "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), **info})
    print(json.dumps(results[-1]), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer-dir", default=str(ROOT / ".gpu" / "smollm2"))
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu-check"))
    p.add_argument("--skip-large", action="store_true")
    args = p.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)

    from pns_mini.data import format_prompt, load_problems
    from pns_mini.generation import sample
    from pns_mini.modeling import load_model_and_tokenizer, token_logprobs

    small = build_random_model(Path(args.tokenizer_dir), "smollm2-135m-shape", out / "m135")
    questions = [r["question"] for r in load_problems("offline", limit=32)]

    def gen(load_in_4bit, bs):
        def run():
            model, tok = load_model_and_tokenizer(str(small), load_in_4bit=load_in_4bit)
            assert next(model.parameters()).is_cuda
            dtype = str(model.dtype)
            prompts = [format_prompt(tok, q) for q in questions[:bs]]
            sample(model, tok, prompts[:1], temperature=0, max_new_tokens=4)  # warm-up
            torch.cuda.synchronize()
            t = time.perf_counter()
            o = sample(model, tok, prompts, temperature=1.0, max_new_tokens=128, seed=0)
            torch.cuda.synchronize()
            sec = time.perf_counter() - t
            # log-probs of the sampled tokens under the same model: bf16 logits, fp32 log-softmax
            with torch.no_grad():
                lp = token_logprobs(model, o.input_ids.cuda(), o.attention_mask.cuda(), o.completion_ids.shape[1])
            return {"dtype": dtype, "4bit": load_in_4bit, "batch": bs,
                    "tokens_per_s": round(o.completion_mask.sum().item() / sec, 1),
                    "logps_finite": bool(torch.isfinite(lp).all())}
        return run

    for q4 in (False, True):
        for bs in (1, 8, 32):
            timed(f"sample bf16 4bit={q4} batch={bs}", gen(q4, bs), results)

    def stage(script, argv):
        def run():
            import importlib
            mod = importlib.import_module(script)
            from pns_mini.config import parse_config
            cfg = parse_config(mod.Config, argv)
            mod.main(cfg)
            rows = [json.loads(line) for line in open(Path(cfg.output_dir) / "metrics.jsonl")]
            last = rows[-1]
            keep = {k: v for k, v in last.items() if k.startswith("time") or k in
                    ("loss", "kl", "grad_norm", "reward/total", "rewards/margins", "logps/chosen", "accuracy")}
            return {"steps": len(rows), **keep}
        return run

    gen_args = ["--model", str(small), "--problems", "offline", "--prompts-per-step", "4", "--num-generations", "8",
                "--max-completion-length", "128", "--max-steps", "2", "--save-steps", "100"]
    timed("train_generator 135m-shape QLoRA (default on CUDA)",
          stage("train_generator", gen_args + ["--output-dir", str(out / "gen")]), results)
    timed("synthesize perturbed 135m-shape",
          stage("synthesize", ["--model", str(small), "--problems", "offline", "--limit", "16",
                               "--negative-source", "perturbed", "--output-dir", str(out / "pairs")]), results)
    timed("train_dpo 135m-shape QLoRA (default on CUDA)",
          stage("train_dpo", ["--model", str(small), "--pairs", str(out / "pairs" / "pairs.jsonl"), "--max-steps", "2",
                              "--output-dir", str(out / "dpo")]), results)
    timed("evaluate 135m-shape bf16, 32 offline problems",
          stage("evaluate", ["--model", str(small), "--benchmarks", "offline", "--limit", "32",
                             "--max-completion-length", "128", "--output-dir", str(out / "eval")]), results)
    if not args.skip_large:
        large = build_random_model(Path(args.tokenizer_dir), "qwen2.5-0.5b-shape", out / "m500")
        timed("train_generator 0.5B-shape QLoRA, 4 prompts x 8 x 256 tokens",
              stage("train_generator", ["--model", str(large), "--problems", "offline", "--prompts-per-step", "4",
                                        "--num-generations", "8", "--max-completion-length", "256", "--max-steps", "2",
                                        "--save-steps", "100", "--output-dir", str(out / "gen-large")]), results)
        timed("train_dpo 0.5B-shape QLoRA",
              stage("train_dpo", ["--model", str(large), "--pairs", str(out / "pairs" / "pairs.jsonl"),
                                  "--max-steps", "2", "--output-dir", str(out / "dpo-large")]), results)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print("\n| check | status | s | peak GiB | details |\n| --- | --- | --- | --- | --- |")
    for r in results:
        details = {k: v for k, v in r.items() if k not in ("check", "status", "seconds", "peak_gib")}
        print(f"| {r['check']} | {r['status']} | {r['seconds']} | {r['peak_gib']} | {json.dumps(details)} |")


if __name__ == "__main__":
    main()
