//! The chat worker benchmark (filled in by the chat-bench commit).
