"""Load model folders with plain Hugging Face code, as a user would; print what was seen as JSON.

Run by any Python that has torch and transformers (no threadsum import), so the compat test can
run it under the oldest supported transformers and compare with the current one:

    python tests/compat/load_model_folder.py FOLDER [FOLDER ...]
"""
from __future__ import annotations

import json
import sys

LONG_TEXT = "Subject: gas contract\nPlease review the revised draft before the meeting on Monday. " * 400
SHORT_TEXT = "Please call me tomorrow about the gas contract."


def inspect_folder(path: str) -> dict:
    """AutoTokenizer + AutoModelForSeq2SeqLM on ``path``; truncate a long input, generate, one forward."""
    import torch
    import transformers
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model, info = AutoModelForSeq2SeqLM.from_pretrained(path, output_loading_info=True)
    model.eval()
    enc = tok(LONG_TEXT, truncation=True, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**enc, max_new_tokens=4, num_beams=1, do_sample=False)
        short = tok(SHORT_TEXT, return_tensors="pt")
        start = torch.tensor([[model.config.decoder_start_token_id]])
        logits = model(**short, decoder_input_ids=start).logits[0, 0, -16:]  # the last ids: merged tokens, not bias-dominated bytes
    return {
        "transformers": transformers.__version__,
        "tokenizer_class": type(tok).__name__,
        "model_max_length": int(tok.model_max_length),
        "positions": int(model.config.max_position_embeddings),
        "truncated_tokens": int(enc["input_ids"].shape[1]),
        "input_names": sorted(short.keys()),
        "short_ids": short["input_ids"][0].tolist(),
        "missing_keys": sorted(info.get("missing_keys") or []),
        "unexpected_keys": sorted(info.get("unexpected_keys") or []),
        "generated_tokens": int(generated.shape[1]),
        "logits": [round(float(x), 5) for x in logits],
    }


if __name__ == "__main__":
    print(json.dumps([inspect_folder(p) for p in sys.argv[1:]]))
