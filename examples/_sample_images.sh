# sourced by the launch examples: writes examples/images/*.png (the sample images requests.jsonl uses)
python -c "from hf_qwen3_deepstack.tiny_checkpoint.build import write_sample_images; write_sample_images('examples/images')"
