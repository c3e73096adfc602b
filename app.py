"""The modeling-ccr web app (Gradio): `python app.py --model runs/demo/model [--model2 DIR] [--corpus DIR]`.

A Hugging Face Space runs this file as is, with its settings in the environment (CCR_MODEL, ...):
see docs/app.md. All the logic is in `modeling_ccr/apps/gradio_app.py`.
"""

from modeling_ccr.apps.gradio_app import main

if __name__ == "__main__":
    raise SystemExit(main())
