//! Pure billing domain. No I/O, no clock, no async.
