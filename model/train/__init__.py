"""Recipes that build the packaged default model: data, tokenizer, FIM, training, evaluation."""
