//! End-to-end tests of the real binaries on loopback (filled in by the runner work).
