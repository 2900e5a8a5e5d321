"""Initialise OmniGlue from a LightGlue checkpoint (same layer shapes; saves most of the training).

Mapping (LightGlue key -> OmniGlue parameter):

* ``input_proj`` -> ``input_proj``;
* ``transformers.{i}.self_attn.Wqkv`` [3c, c] -> ``self_blocks.{i}.{q,k,v}``: LightGlue unflattens
  the output as (heads, head_dim, 3), so row ``h*3*hd + d*3 + t`` is channel ``h*hd + d`` of
  q (t=0), k (t=1) or v (t=2);
* ``.self_attn.out_proj`` -> ``.merge``; ``.ffn.{0,1,3}`` -> ``.mlp.{0,1,3}``;
* ``transformers.{i}.cross_attn.to_qk`` -> ``cross_blocks.{i}.q`` and ``.k`` (LightGlue shares one
  projection for both sides), ``.to_v`` -> ``.v``, ``.to_out`` -> ``.merge``, ``.ffn`` -> ``.mlp``;
* ``log_assignment.{last}.final_proj`` -> ``final_proj`` (LightGlue's similarity is also
  ``<W f0, W f1> / sqrt(c)``).

Not transferable: LightGlue's rotary position encoding (OmniGlue adds a Fourier-MLP position
to q and k instead) and its matchability head (OmniGlue has a Sinkhorn dustbin). The position
MLP's last layer is zero-initialised so the warm-started model starts as "LightGlue without
positions" and learns positions from there, instead of starting from random q/k offsets.
Old checkpoints with ``self_attn.{i}.`` / ``cross_attn.{i}.`` prefixes are renamed first.
"""

from __future__ import annotations

import re

import torch
from torch import nn


def _rename_old_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", key)
        out[key] = value
    return out


def lightglue_to_omniglue(sd: dict[str, torch.Tensor], n_layers: int, num_heads: int
                          ) -> dict[str, torch.Tensor]:
    """OmniGlue state-dict entries derived from a LightGlue state dict."""
    sd = _rename_old_keys(sd)
    out: dict[str, torch.Tensor] = {}
    out["input_proj.weight"] = sd["input_proj.weight"]
    out["input_proj.bias"] = sd["input_proj.bias"]
    for i in range(n_layers):
        sa, ca = f"transformers.{i}.self_attn", f"transformers.{i}.cross_attn"
        dst_s, dst_c = f"self_blocks.{i}", f"cross_blocks.{i}"
        for part in ("weight", "bias"):
            w = sd[f"{sa}.Wqkv.{part}"]
            c = w.shape[0] // 3
            hd = c // num_heads
            w = w.reshape(num_heads, hd, 3, *w.shape[1:])
            for t, name in enumerate("qkv"):
                out[f"{dst_s}.{name}.{part}"] = w[:, :, t].reshape(c, *w.shape[3:]).clone()
            out[f"{dst_s}.merge.{part}"] = sd[f"{sa}.out_proj.{part}"]
            out[f"{dst_c}.q.{part}"] = sd[f"{ca}.to_qk.{part}"].clone()
            out[f"{dst_c}.k.{part}"] = sd[f"{ca}.to_qk.{part}"].clone()
            out[f"{dst_c}.v.{part}"] = sd[f"{ca}.to_v.{part}"]
            out[f"{dst_c}.merge.{part}"] = sd[f"{ca}.to_out.{part}"]
            for j in (0, 1, 3):
                out[f"{dst_s}.mlp.{j}.{part}"] = sd[f"{sa}.ffn.{j}.{part}"]
                out[f"{dst_c}.mlp.{j}.{part}"] = sd[f"{ca}.ffn.{j}.{part}"]
    last = max(int(m.group(1)) for k in sd if (m := re.match(r"log_assignment\.(\d+)\.final_proj", k)))
    out["final_proj.weight"] = sd[f"log_assignment.{last}.final_proj.weight"]
    out["final_proj.bias"] = sd[f"log_assignment.{last}.final_proj.bias"]
    return out


def warm_start_from_lightglue(model: nn.Module, checkpoint: str = "aliked_lightglue") -> list[str]:
    """Load LightGlue weights into ``model`` (an ``OmniGlue``); returns the keys left as initialised."""
    from .. import weights

    path = weights.resolve_known(checkpoint) if checkpoint in weights.KNOWN else checkpoint
    sd = weights.load_state_dict(path)
    conf = model.conf
    mapped = lightglue_to_omniglue(sd, conf["n_layers"], conf["num_heads"])
    own = model.state_dict()
    for key, value in mapped.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, "
                             f"model expects {tuple(own[key].shape)}")
    model.load_state_dict(mapped, strict=False)
    last = model.posenc.mlp[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return sorted(set(own) - set(mapped))
