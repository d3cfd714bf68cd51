"""Model parts: SigLIP tower, connector, G-MoE Qwen2 decoder, and the full VLM."""
