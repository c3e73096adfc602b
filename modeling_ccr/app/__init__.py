"""The web app (Gradio; optional extra `app`): `core` computes, `ui` draws the page, `main` starts it.

`python app.py --model runs/demo/model [--model2 runs/demo_base/model] [--corpus DIR] [--images DIR]`
(or `python -m modeling_ccr.app ...`). On a Hugging Face Space, the same settings come from the
environment: CCR_MODEL, CCR_MODEL2, CCR_CORPUS, CCR_SPLIT, CCR_IMAGES.
"""

from .main import build_app, main, parse_args

__all__ = ["build_app", "main", "parse_args"]
