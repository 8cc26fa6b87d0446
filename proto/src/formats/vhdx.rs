//! TODO(helper): VHDX structures.
