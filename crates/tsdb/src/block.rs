//! Placeholder for helper D's `block` module; D overwrites this file.
