"""Shipping a run: merge its adapter into a plain Hugging Face model, export the adapter, or write a GGUF file."""
