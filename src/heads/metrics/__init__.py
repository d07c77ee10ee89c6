"""Evaluation metrics shared by heads (retrieval, sequence decoding, captioning)."""
