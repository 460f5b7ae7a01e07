"""`make dist`'s smoke test, run by the fresh venv's Python outside the source tree:
the installed wheel imports, reports its version, and chats through the SDK.

    python dist_smoke.py MODEL.gguf EXPECTED_VERSION
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(model: str, expected_version: str) -> None:
    import kronk
    from kronk import Kronk

    where = Path(kronk.__file__).resolve()
    assert "site-packages" in where.parts, f"kronk imported from the source tree: {where}"
    assert kronk.__version__ == expected_version, (kronk.__version__, expected_version)
    with Kronk(model, n_ctx=512, n_seq_max=1) as k:
        response = k.chat(
            messages=[{"role": "user", "content": "What is 2+2? Answer with the number."}],
            temperature=0,
            max_tokens=16,
        )
    text = response.choices[0].message.content or ""
    print(f"kronk {kronk.__version__} from {where.parent}: {text!r}")
    assert "4" in text, text


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
