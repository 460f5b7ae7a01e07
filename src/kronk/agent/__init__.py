"""Tools kronk runs on behalf of the user: built-in web_search and web_fetch, the
user's MCP servers, and the loop that runs a chat turn's server-side tool calls.

This package sits beside the SDK (it drives `kronk.streams` turns) and never imports
the server; docs/tools.md describes it.
"""
