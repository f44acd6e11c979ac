//! Filled in by its kernel family's author.
