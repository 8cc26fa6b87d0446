//! TODO(helper): HRL structures.
