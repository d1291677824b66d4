//! KeyString: filled in by a helper.
