//! In-tree OpenAI-compatible mock upstream (added by the request-path issue).
