"""Chat-level processing: templates and parsing of model output (reasoning, tool calls)."""
