//! Fuzz target bodies (filled in with the rewriter).
