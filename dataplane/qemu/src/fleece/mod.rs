//! Fleecing views.
