"""`hf-qwen3-deepstack serve`: an OpenAI-compatible chat endpoint on the language leader, in front
of the batched two-group runtime."""
