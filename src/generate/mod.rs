//! Seeded synthetic extracts with injected defects and a ground-truth file.
