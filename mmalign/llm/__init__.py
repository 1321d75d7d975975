"""Clients for LLM back-ends (judges, data builders): any OpenAI-compatible chat endpoint."""

from mmalign.llm.client import ChatClient, InvalidResponse, LLMConfig, LLMError, image_part, user_message

__all__ = ["ChatClient", "InvalidResponse", "LLMConfig", "LLMError", "image_part", "user_message"]
