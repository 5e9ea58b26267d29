//! Placeholder for helper D's `rollup` module; D overwrites this file.
