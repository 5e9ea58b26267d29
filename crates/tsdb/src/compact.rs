//! Placeholder for helper D's `compact` module; D overwrites this file.
