"""mmalign: align LLaVA-style large multimodal models and make them hallucinate less."""

__version__ = "0.1.0"
