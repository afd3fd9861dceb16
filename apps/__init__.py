"""What a person starts: the `modelyard` command line (and, later, the Gradio demo)."""
