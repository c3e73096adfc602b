"""The modeling-ccr web app (Gradio): `python app.py --model runs/demo/model [--model2 DIR] [--corpus DIR]`.

With no arguments it opens the digit-scenes demo models (`ccr demo --corpus digit-scenes` makes them in
runs/demo_digit_scenes), the constrained one beside the plain one, on a test scene of their corpus.

A Hugging Face Space runs this file as is, with its settings in the environment (CCR_MODEL, ...):
see docs/app.md. All the logic is in `modeling_ccr/apps/gradio_app.py`.
"""

from modeling_ccr.apps.gradio_app import main

if __name__ == "__main__":
    raise SystemExit(main())
