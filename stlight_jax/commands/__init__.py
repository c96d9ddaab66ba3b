"""The command lines (`stlight-train`, `stlight-evaluate`, `stlight-convert`, `stlight-export`
once installed; `python train.py` / `python evaluate.py` in a checkout run the same code)."""
