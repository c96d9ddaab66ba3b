"""Trained STLight models shipped with stlight-jax (package data; see stlight_jax.pretrained).

`<name>.safetensors`: the weights in the paper's Figure 10 state_dict layout, float32.
`<name>.json`: the run's resolved config (`config`), test metrics with the baselines, steps,
wall time and the weights' SHA-256. `<name>.metrics.jsonl`: the training log.
"""
