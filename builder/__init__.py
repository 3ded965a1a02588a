"""furoshiki builder: GGUF inspection, Hugging Face download, stub build, packing."""
