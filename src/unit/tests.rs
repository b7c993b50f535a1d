//! Tests of unit file parsing, validation and directory loading.
