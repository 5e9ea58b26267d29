//! Placeholder for helper D's `codec` module; D overwrites this file.
