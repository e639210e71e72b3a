"""Common training machines, and a ladder of public model shapes to say what each machine can hold.

Memory is what the card offers to programs (nvidia-smi's total, in MiB), peak throughput the dense
(no sparsity) bf16 tensor-core figure from the vendor's data sheet — fp16 for the V100, which has no
bf16. These are the published round figures; a real card's clocks and cooling move them a little.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    name: str
    gpus: int
    memory_mib: int  # per GPU
    tflops: float  # per GPU, dense bf16 (V100: fp16)
    bf16: bool = True

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20

    @property
    def total_gib(self) -> float:
        return self.gpus * self.memory_mib / 1024

    @property
    def precision(self) -> str:
        """What `precision: auto` becomes on it."""
        return "bf16" if self.bf16 else "fp16"


MACHINES: tuple[Machine, ...] = (
    Machine("V100 16 GB", 1, 16_160, 125.0, bf16=False),
    Machine("A10G 24 GB", 1, 22_731, 70.0),  # AWS g5; NVIDIA lists the A10 at 125, the A10G runs lower clocks
    Machine("L4 24 GB", 1, 22_700, 121.0),
    Machine("A100 40 GB", 1, 40_960, 312.0),
    Machine("A100 80 GB", 1, 81_920, 312.0),
    Machine("H100 80 GB", 1, 81_559, 989.0),
    Machine("H200 141 GB", 1, 143_771, 989.0),
    Machine("8×V100 128 GB", 8, 16_160, 125.0, bf16=False),
    Machine("8×A100 320 GB", 8, 40_960, 312.0),
    Machine("8×A100 640 GB", 8, 81_920, 312.0),
    Machine("8×H100 640 GB", 8, 81_559, 989.0),
)


def _llama(h: int, layers: int, heads: int, kv: int, inter: int, vocab: int, *, tied: bool, head_dim: int | None = None,
           bias: bool = False, model_type: str = "llama") -> dict:  # fmt: skip
    config = {"model_type": model_type, "hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": vocab, "tie_word_embeddings": tied,
              "max_position_embeddings": 131072}  # fmt: skip
    if head_dim:
        config["head_dim"] = head_dim
    if bias and model_type == "llama":
        config["attention_bias"] = True
    return config


# Public shapes (their config.json sizes), smallest first: what "the largest model that fits" is read from.
REFERENCE_MODELS: tuple[tuple[str, dict], ...] = (
    ("SmolLM2-135M", _llama(576, 30, 9, 3, 1536, 49152, tied=True)),
    ("SmolLM2-360M", _llama(960, 32, 15, 5, 2560, 49152, tied=True)),
    ("Qwen2.5-0.5B", _llama(896, 24, 14, 2, 4864, 151936, tied=True, model_type="qwen2")),
    ("Llama-3.2-1B", _llama(2048, 16, 32, 8, 8192, 128256, tied=True, head_dim=64)),
    ("SmolLM2-1.7B", _llama(2048, 24, 32, 32, 8192, 49152, tied=True)),
    ("Llama-3.2-3B", _llama(3072, 28, 24, 8, 8192, 128256, tied=True, head_dim=128)),
    ("Qwen2.5-7B", _llama(3584, 28, 28, 4, 18944, 152064, tied=False, model_type="qwen2")),
    ("Llama-3.1-8B", _llama(4096, 32, 32, 8, 14336, 128256, tied=False)),
    ("Qwen2.5-14B", _llama(5120, 48, 40, 8, 13824, 152064, tied=False, model_type="qwen2")),
    ("Qwen2.5-32B", _llama(5120, 64, 40, 8, 27648, 152064, tied=False, model_type="qwen2")),
    ("Llama-3.1-70B", _llama(8192, 80, 64, 8, 28672, 128256, tied=False)),
    ("Llama-3.1-405B", _llama(16384, 126, 128, 8, 53248, 128256, tied=False)),
)
