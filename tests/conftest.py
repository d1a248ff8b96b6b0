"""Shared fixtures: a tiny random Llama-style model with the embedded model's real tokenizer,
built in-process and saved as a normal `save_pretrained` folder, so every script can load it by
path exactly as it would load a real model. Most tests take well under a second with it."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test touches the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def build_tiny_model(tokenizer, seed=0, layers=2, hidden=64):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def embedded_dir():
    """The cached safetensors folder of the embedded SmolLM2-135M-Instruct (converted once)."""
    from pns_mini.modeling import embedded_model_dir
    return embedded_model_dir()


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A folder holding a 2-layer random Llama with the embedded tokenizer."""
    path = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
