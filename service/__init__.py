"""ai-stream: streams answers from large language models as Server-Sent Events."""

__version__ = "0.1.0"
