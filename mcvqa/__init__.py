"""mcvqa: fine-tune Qwen vision-language models for multiple-choice VQA (shared logic behind the scripts)."""

LETTERS = ("a", "b", "c", "d")
