"""Applications built on the library: the Gradio web app."""
