"""Mixtures of experts: Mixtral, Qwen2-MoE (Qwen1.5-MoE) and Qwen3-MoE.

The Llama layer with the MLP of its sparse layers (`MoEConfig.sparse_layers`) replaced
by `SparseMoE`: a router picks each token's top-k experts from a softmax over all of
them (in float32), the k weights renormalised to sum to 1 where the model says so
(Mixtral always, Qwen by `norm_topk_prob`); each expert is a SwiGLU MLP. Experts are
computed grouped: the (token, expert) pairs are sorted by expert and every expert with
tokens runs one GEMM over all of its tokens, the weighted outputs added back per token
(in expert order, as transformers adds them). Qwen2-MoE adds a shared expert that
every token goes through, scaled by sigmoid(shared_expert_gate(x)).

The experts of a layer are stacked in two parameters, [num_experts, 2 * I, hidden]
(gate then up) and [num_experts, hidden, I], loaded from the per-expert tensors that
checkpoints hold (`WeightSlot.expert`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.models.layers import GatedMLP, WeightSlot, activation, empty_parameter
from engine.models.llama import LlamaDecoderLayer, LlamaForCausalLM


@dataclass(frozen=True)
class ExpertNames:
    """How a checkpoint names a sparse block's tensors."""

    block: str  # e.g. "block_sparse_moe" (Mixtral) or "mlp" (Qwen)
    gate: str  # per-expert projections: gate, up, down
    up: str
    down: str


MIXTRAL_NAMES = ExpertNames("block_sparse_moe", "w1", "w3", "w2")
QWEN_NAMES = ExpertNames("mlp", "gate_proj", "up_proj", "down_proj")


class SparseMoE(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        moe = config.moe
        assert moe is not None, "SparseMoE needs ModelConfig.moe"
        hidden, size, experts = config.hidden_size, moe.expert_intermediate_size, moe.num_experts
        self.num_experts, self.top_k = experts, moe.num_experts_per_token
        self.normalize_top_k = moe.normalize_top_k
        self.intermediate_size = size
        self.act = activation(config.hidden_act)
        self.router_weight = empty_parameter(experts, hidden, dtype=dtype, device=device)
        self.experts_gate_up_weight = empty_parameter(
            experts, 2 * size, hidden, dtype=dtype, device=device
        )
        self.experts_down_weight = empty_parameter(
            experts, hidden, size, dtype=dtype, device=device
        )
        shared = moe.shared_expert_intermediate_size
        self.shared_expert = (
            GatedMLP(hidden, shared, config.hidden_act, dtype, device) if shared else None
        )
        self.shared_expert_gate_weight = (
            empty_parameter(1, hidden, dtype=dtype, device=device) if shared else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [num_tokens, hidden_size]
        router_logits = F.linear(x, self.router_weight)  # [T, E]
        probabilities = router_logits.float().softmax(dim=-1)
        weights, experts = probabilities.topk(self.top_k, dim=-1)  # [T, k] each
        if self.normalize_top_k:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = self._run_experts(x, weights.to(x.dtype), experts)
        if self.shared_expert is not None:
            gate = torch.sigmoid(F.linear(x, self.shared_expert_gate_weight))  # [T, 1]
            out = out + gate * self.shared_expert(x)
        return out

    def _run_experts(
        self,
        x: torch.Tensor,  # [T, hidden]
        weights: torch.Tensor,  # [T, k], x's dtype
        experts: torch.Tensor,  # [T, k] int64
    ) -> torch.Tensor:  # [T, hidden]
        out = torch.zeros_like(x)
        flat_experts = experts.reshape(-1)  # [T * k]: pair i is token i // k
        order = flat_experts.argsort(stable=True)  # pairs grouped by expert, tokens in order
        tokens = order // self.top_k
        pair_weights = weights.reshape(-1)[order]
        counts = torch.bincount(flat_experts, minlength=self.num_experts).tolist()
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            rows = slice(start, start + count)
            start += count
            gate, up = F.linear(x[tokens[rows]], self.experts_gate_up_weight[expert]).chunk(
                2, dim=-1
            )
            y = F.linear(self.act(gate) * up, self.experts_down_weight[expert])  # [count, hidden]
            out.index_add_(0, tokens[rows], y * pair_weights[rows, None])
        return out

    def weight_map(self, hf: str, ours: str, names: ExpertNames) -> dict[str, WeightSlot]:
        """`hf` is the layer's prefix ("model.layers.3."), `ours` the block's."""
        block, size = f"{hf}{names.block}.", self.intermediate_size
        hidden = self.router_weight.shape[1]
        mapping = {f"{block}gate.weight": WeightSlot(f"{ours}router_weight", 0, self.num_experts)}
        for expert in range(self.num_experts):
            prefix = f"{block}experts.{expert}."
            for name, parameter, start, rows in (
                (names.gate, "experts_gate_up_weight", 0, size),
                (names.up, "experts_gate_up_weight", size, size),
                (names.down, "experts_down_weight", 0, hidden),
            ):
                mapping[f"{prefix}{name}.weight"] = WeightSlot(
                    f"{ours}{parameter}", start, rows, expert=expert
                )
        if self.shared_expert is not None:
            mapping.update(
                self.shared_expert.weight_map(f"{block}shared_expert.", f"{ours}shared_expert.")
            )
            mapping[f"{block}shared_expert_gate.weight"] = WeightSlot(
                f"{ours}shared_expert_gate_weight", 0, 1
            )
        return mapping


class MoEDecoderLayer(LlamaDecoderLayer):
    """The Llama layer whose MLP is `SparseMoE` on the sparse layers."""

    def __init__(
        self,
        config: ModelConfig,
        layer: int,
        dtype: torch.dtype,
        device: torch.device,
        qk_norm: str | None,
        names: ExpertNames,
    ) -> None:
        self.names = names
        super().__init__(config, layer, dtype, device, qk_norm=qk_norm)

    def make_mlp(
        self, config: ModelConfig, layer: int, dtype: torch.dtype, device: torch.device
    ) -> nn.Module:
        assert config.moe is not None
        if config.moe.sparse_layers[layer]:
            return SparseMoE(config, dtype, device)
        return super().make_mlp(config, layer, dtype, device)

    def mlp_weight_map(self, hf: str, ours: str) -> dict[str, WeightSlot]:
        if isinstance(self.mlp, SparseMoE):
            return self.mlp.weight_map(hf, f"{ours}mlp.", self.names)
        return super().mlp_weight_map(hf, ours)


class MixtralForCausalLM(LlamaForCausalLM):
    names = MIXTRAL_NAMES

    def make_layer(
        self, config: ModelConfig, layer: int, dtype: torch.dtype, device: torch.device
    ) -> nn.Module:
        return MoEDecoderLayer(config, layer, dtype, device, qk_norm=self.qk_norm, names=self.names)


class Qwen2MoeForCausalLM(MixtralForCausalLM):
    names = QWEN_NAMES


class Qwen3MoeForCausalLM(Qwen2MoeForCausalLM):
    qk_norm = "head"
